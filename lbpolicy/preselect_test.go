package lbpolicy

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddymesh/caddymesh/internal/pool"
)

// withCandidates picks from a schedule the way a preselected attempt does:
// upcoming names the candidates, the first usable one is taken and the
// turns of those refused before it are used up.
func withCandidates(s *schedule, usable func(int) bool) int {
	candidates := s.upcoming(nil, pool.MaxCandidates)
	for i, member := range candidates {
		if usable(member) {
			s.skip(i)
			return member
		}
	}
	s.skip(len(candidates) - 1)
	return -1
}

// A preselected attempt takes the same upstreams as a pick from the whole
// pool, unavailable upstreams and all, as long as one of its candidates is
// available.
func TestScheduleCandidatesFollowTheWholeCycle(t *testing.T) {
	weights := make([]int, 40)
	for i := range weights {
		weights[i] = i%4 + 1
	}
	down := map[int]bool{3: true, 4: true, 17: true}
	usable := func(m int) bool { return !down[m] }
	whole, preselected := newSchedule(weights), newSchedule(weights)
	for turn := range 1000 {
		if want, got := whole.pick(usable), withCandidates(preselected, usable); got != want {
			t.Fatalf("turn %d: candidates gave %d, the whole pool %d", turn, got, want)
		}
	}
}

func TestScheduleCandidatesAreTheNextTurns(t *testing.T) {
	s := newSchedule([]int{5, 1, 1}) // a a b a c a a
	if got := s.upcoming(nil, 4); !slices.Equal(got, []int{0, 0, 1, 0}) {
		t.Errorf("first candidates %v, want a a b a", got)
	}
	if got := s.upcoming(nil, 10); !slices.Equal(got, []int{0, 1, 0, 2, 0, 0, 0}) {
		t.Errorf("next candidates %v, want the cycle from its second turn, a b a c a a a", got)
	}
}

// The candidates of a key are the members a pick would try, in order.
func TestRingCandidatesAreWhatPickTries(t *testing.T) {
	r := newRing(members(100), defaultPoints)
	random := rand.New(rand.NewPCG(1, 2))
	for range 1000 {
		hash := random.Uint64()
		candidates := r.nearest(hash, nil, pool.MaxCandidates)
		if len(candidates) != pool.MaxCandidates {
			t.Fatalf("%d candidates, want %d", len(candidates), pool.MaxCandidates)
		}
		for j, want := range candidates {
			refused := candidates[:j]
			if got := r.pick(hash, func(m int) bool { return !slices.Contains(refused, m) }); got != want {
				t.Fatalf("with %v refused, pick took %d, the %d-th candidate is %d", refused, got, j, want)
			}
		}
	}
}

func TestRingCandidatesOfASmallRing(t *testing.T) {
	r := newRing(members(3), defaultPoints)
	if got := r.nearest(7, nil, pool.MaxCandidates); len(got) != 3 {
		t.Errorf("candidates %v from 3 members, want all 3", got)
	}
	if got := r.nearest(7, nil, 1); len(got) != 1 {
		t.Errorf("candidates %v, want 1", got)
	}
}

// largePool returns a snapshot of n instances, weights 1 to 4, and their
// static upstreams.
func largePool(n int) (*pool.Snapshot, reverseproxy.UpstreamPool) {
	instances := make([]pool.Instance, n)
	names := make([]string, n)
	for i := range instances {
		names[i] = fmt.Sprintf("10.0.%d.%d", i/256, i%256)
		instances[i] = pool.Instance{Dial: names[i] + ":80", Weight: i%4 + 1}
	}
	return pool.NewSnapshot(instances), upstreamsNamed(names...)
}

// attempt does what the consul source and Caddy do for an attempt of r
// when p is the proxy's policy: the handout names the candidates and
// records them in r, and each gets the Host of its address in all, as
// Caddy's provisioning of upstreams does.
func attempt(p preselectingPolicy, s *pool.Snapshot, all reverseproxy.UpstreamPool, r *http.Request) reverseproxy.UpstreamPool {
	hosts := map[string]*reverseproxy.Host{}
	for _, u := range all {
		hosts[u.Dial] = u.Host
	}
	upstreams := handoutFor(p).Upstreams(r, s)
	for _, u := range upstreams {
		u.Host = hosts[u.Dial]
	}
	return upstreams
}

// handoutFor returns the handout of a reverse_proxy whose policy is p.
func handoutFor(p reverseproxy.Selector) *pool.Handout {
	return pool.NewHandout(&reverseproxy.Handler{LoadBalancing: &reverseproxy.LoadBalancing{SelectionPolicy: p}}, nil)
}

// preselectingPolicy is a policy that can preselect.
type preselectingPolicy interface {
	reverseproxy.Selector
	pool.Preselector
}

// preselectingPolicies returns new instances of the policies that can
// preselect; the hash policies hash the X-User header.
func preselectingPolicies(t testing.TB) map[string]preselectingPolicy {
	return map[string]preselectingPolicy{
		"smooth_weighted":              &SmoothWeighted{},
		"consistent_hash":              provisioned(t, &ConsistentHash{Key: "{http.request.header.X-User}"}),
		"consistent_hash_bounded_load": provisioned(t, &ConsistentHash{Key: "{http.request.header.X-User}", BoundedLoad: 1.25}),
	}
}

// Through the policies' Select, preselected attempts go where the whole
// pool's would.
func TestPreselectedSelectMatchesTheWholePool(t *testing.T) {
	snapshot, upstreams := largePool(100)
	preselectingOnes := preselectingPolicies(t)
	for name, whole := range preselectingPolicies(t) {
		t.Run(name, func(t *testing.T) {
			preselecting := preselectingOnes[name]
			for i := range 500 {
				r := caddyRequest("")
				r.Header.Set("X-User", fmt.Sprintf("user-%d", i%37))
				pool.Attach(r, snapshot)
				want := whole.Select(upstreams, r, nil)
				got := preselecting.Select(attempt(preselecting, snapshot, upstreams, r), r, nil)
				if got.Dial != want.Dial {
					t.Fatalf("request %d: preselected %s, the whole pool %s", i, got.Dial, want.Dial)
				}
			}
		})
	}
}

func TestConsistentHashLeavesAnEmptyKeyToTheWholePool(t *testing.T) {
	snapshot, _ := largePool(100)
	ch := provisioned(t, &ConsistentHash{Key: "{http.request.header.X-User}"})
	if got := ch.Preselect(snapshot, caddyRequest(""), nil); len(got) != 0 {
		t.Errorf("candidates %v for an empty key, want none (the fallback policy needs the pool)", got)
	}
}

func TestPreselectAndSelectDoNotAllocate(t *testing.T) {
	snapshot, upstreams := largePool(256)
	r := caddyRequest("203.0.113.7")
	r.Header.Set("X-User", "alice")
	policies := preselectingPolicies(t)
	policies["least_latency"] = newTestLeastLatency(t)
	for name, p := range policies {
		candidates := attempt(p, snapshot, upstreams, r) // builds
		into := make([]int, 0, pool.MaxCandidates)
		allocs := testing.AllocsPerRun(1000, func() {
			p.Preselect(snapshot, r, into)
			p.Select(candidates, r, nil)
		})
		if allocs != 0 {
			t.Errorf("%s allocates %v times per preselected attempt, want 0", name, allocs)
		}
	}
}

// A policy chooses from upstreams as from a whole pool unless it named
// them itself: another policy's candidates, as many as the upstreams, do
// not fool it.
func TestPolicyTrustsOnlyItsOwnCandidates(t *testing.T) {
	snapshot, all := largePool(100)
	other := provisioned(t, &ConsistentHash{Key: "{http.request.header.X-User}"})
	for name, p := range preselectingPolicies(t) {
		for i := range 200 {
			r := caddyRequest("")
			r.Header.Set("X-User", fmt.Sprintf("user-%d", i))
			upstreams := attempt(other, snapshot, all, r)
			if pool.PreselectionOf(r) == nil {
				t.Fatalf("request %d: no candidates named", i)
			}
			if pool.PreselectionBy(r, p, upstreams) != nil {
				t.Fatalf("%s trusts the candidates of another policy", name)
			}
			if pool.PreselectionBy(r, other, upstreams) == nil {
				t.Fatalf("the policy that named the candidates does not trust them")
			}
			if pool.PreselectionBy(r, other, upstreams[1:]) != nil {
				t.Fatalf("candidates trusted for fewer upstreams than were named")
			}
		}
	}
}

// least_latency names distinct instances with weight, each about as often
// as the others, and takes the cheaper of the first two available: from
// candidates as from the whole pool, a slow instance loses its draws.
// (That unavailable upstreams are skipped is tested through Caddy.)
func TestLeastLatencyCandidates(t *testing.T) {
	const n, attempts = 40, 4000
	instances := make([]pool.Instance, n)
	names := make([]string, n)
	for i := range instances {
		names[i] = fmt.Sprintf("candidate-%d", i)
		instances[i] = pool.Instance{Dial: names[i] + ":80", Weight: 1}
	}
	instances[3].Weight = 0
	snapshot, all := pool.NewSnapshot(instances), upstreamsNamed(names...)
	ll := newTestLeastLatency(t)
	rtts := make([]time.Duration, n)
	for i := range rtts {
		rtts[i] = time.Millisecond
	}
	rtts[7] = 50 * time.Millisecond
	measured(ll, all, rtts...)

	named := map[int]int{}
	chosen := map[string]int{}
	for range attempts {
		r := caddyRequest("")
		upstreams := attempt(ll, snapshot, all, r)
		candidates := pool.PreselectionOf(r).Candidates
		if len(candidates) != pool.MaxCandidates || len(upstreams) != pool.MaxCandidates {
			t.Fatalf("%d candidates, %d upstreams, want %d", len(candidates), len(upstreams), pool.MaxCandidates)
		}
		for k, c := range candidates {
			if slices.Contains(candidates[:k], c) || c == 3 {
				t.Fatalf("candidates %v: a repeat, or instance 3 of weight 0", candidates)
			}
			named[c]++
		}
		chosen[ll.Select(upstreams, r, nil).Dial]++
	}
	want := attempts * pool.MaxCandidates / (n - 1)
	for i := range n {
		if i != 3 && (named[i] < want*8/10 || named[i] > want*12/10) {
			t.Errorf("instance %d named %d times, want about %d", i, named[i], want)
		}
	}
	if got := chosen[all[7].Dial]; got > attempts/200 {
		t.Errorf("the slow instance chosen %d times of %d, want under 0.5%%", got, attempts)
	}
	if got := len(chosen); got < n-2 {
		t.Errorf("%d instances chosen, want all %d but the slow and the weightless", got, n-2)
	}
}
