package consul

import "time"

// Status is how a poller has fared with Consul lately.
type Status struct {
	// Index is Consul's index of the last answer.
	Index uint64
	// SyncedAt is when Consul last answered.
	SyncedAt time.Time
	// ConfirmedAt is when Consul last confirmed what is served.
	ConfirmedAt time.Time
	// LastContact is how long the server behind the last answer had not
	// heard from its leader (X-Consul-LastContact).
	LastContact time.Duration
	// AnswerLeader is whether the last answer said a leader was known.
	AnswerLeader bool
	// Behind is whether the last answer is older than what is served.
	Behind bool
	// Err is the last query's error, if it failed.
	Err string
	// FailingSince is when the current outage began; zero if none.
	FailingSince time.Time
}

// Blocking reports whether a blocking query from the last answer is in
// flight: Consul answers it at once on a change, so it keeps confirming
// what is served while its datacenter has a leader.
func (s *Status) Blocking() bool {
	return s.Err == "" && !s.SyncedAt.IsZero() && !s.Behind
}

// Confirmed is when Consul last confirmed what is served: at the last
// answer given while a leader was known, or continuously while a blocking
// query is in flight and the connection's leader check finds a leader.
func (s *Status) Confirmed(now time.Time, leader *LeaderState) time.Time {
	if !s.Blocking() {
		return s.ConfirmedAt
	}
	if leader.Known {
		return now
	}
	return latest(s.ConfirmedAt, leader.LastFound)
}

// Staleness is how old what a poller serves may be: the time since Consul
// last confirmed it, plus how far the answering server lagged its leader
// (X-Consul-LastContact, in stale mode). Zero before the first answer.
func (s *Status) Staleness(now time.Time, leader *LeaderState) time.Duration {
	if s.SyncedAt.IsZero() {
		return 0
	}
	confirmed := s.Confirmed(now, leader)
	if confirmed.IsZero() { // answered, but never with a leader known
		confirmed = s.SyncedAt
	}
	return max(now.Sub(confirmed), 0) + s.LastContact
}

// KnownLeader is whether Consul last said it has a leader: the newer of
// the connection's leader check and the last answer's header.
func (s *Status) KnownLeader(leader *LeaderState) bool {
	if leader.Checked.After(s.SyncedAt) {
		return leader.Known
	}
	return s.AnswerLeader || leader.Known
}

// latest returns the later of two times.
func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
