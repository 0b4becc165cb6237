package lbpolicy

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"testing"

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

// attempt does what the consul source does for a preselected attempt of
// r: it asks p for candidates, attaches them, and returns their upstreams.
func attempt(p pool.Preselector, s *pool.Snapshot, all reverseproxy.UpstreamPool, r *http.Request) reverseproxy.UpstreamPool {
	ps := &pool.Preselection{Snapshot: s, Candidates: p.Preselect(s, r, make([]int, 0, pool.MaxCandidates))}
	pool.AttachPreselection(r, ps)
	var upstreams reverseproxy.UpstreamPool
	for _, i := range ps.Candidates {
		upstreams = append(upstreams, all[i])
	}
	return upstreams
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
				if got != want {
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
	for name, p := range preselectingPolicies(t) {
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
