package discovery

import (
	"net/http"
	"testing"

	"github.com/caddymesh/caddymesh/internal/pool"
)

// naming is a preselector that names fixed instances.
type naming []int

func (n naming) Preselect(_ *pool.Snapshot, _ *http.Request, candidates []int) []int {
	return append(candidates, n...)
}

func dials(t *testing.T, source *ConsulUpstreams, r *http.Request) []string {
	t.Helper()
	upstreams, err := source.GetUpstreams(r)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, u := range upstreams {
		out = append(out, u.Dial)
	}
	return out
}

func TestLargePoolsHandCaddyTheCandidates(t *testing.T) {
	names := instanceNames(pool.PreselectAbove + 1)
	source := staticSource(answered(names))
	source.preselector = naming{5, 0, 9}
	r := newRequest()
	if got := dials(t, source, r); len(got) != 3 || got[0] != names[5]+":80" || got[2] != names[9]+":80" {
		t.Fatalf("upstreams %v, want instances 5, 0 and 9", got)
	}
	if p := pool.PreselectionOf(r); p == nil || len(p.Candidates) != 3 || p.Candidates[0] != 5 {
		t.Fatalf("request carries preselection %+v, want candidates 5, 0, 9", p)
	}
	if got := dials(t, source, r); len(got) != len(names) || pool.FromRequest(r) == nil {
		t.Errorf("a retry of the request got %d upstreams, want the whole pool of %d and its snapshot", len(got), len(names))
	}
	if got := dials(t, source, r); len(got) != 3 {
		t.Errorf("the attempt after a whole pool got %d upstreams, want the 3 candidates", len(got))
	}
	allocs := testing.AllocsPerRun(100, func() {
		pool.Attach(r, nil) // a new request
		source.GetUpstreams(r)
	})
	if allocs != 1 {
		t.Errorf("GetUpstreams allocates %v times with candidates, want 1", allocs)
	}
}

func TestSmallPoolsAndNoCandidatesHandCaddyTheWholePool(t *testing.T) {
	small := staticSource(answered(instanceNames(pool.PreselectAbove)))
	small.preselector = naming{1}
	if got := dials(t, small, newRequest()); len(got) != pool.PreselectAbove {
		t.Errorf("a pool of %d gave %d upstreams, want all", pool.PreselectAbove, len(got))
	}
	none := staticSource(answered(instanceNames(40)))
	none.preselector = naming{}
	r := newRequest()
	if got := dials(t, none, r); len(got) != 40 || pool.FromRequest(r) == nil {
		t.Errorf("with no candidates named, %d upstreams, want the whole pool of 40 and its snapshot", len(got))
	}
}
