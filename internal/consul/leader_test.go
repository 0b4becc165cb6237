package consul

import "testing"

func TestLeaderChecksComeSoonerWhileNoLeaderIsFound(t *testing.T) {
	if found, lost := nextLeaderCheck(true), nextLeaderCheck(false); lost <= 0 || lost >= found || found != leaderCheckInterval {
		t.Errorf("next check after a leader was found: %s, after none was: %s; want the interval, then a shorter, non-zero one", found, lost)
	}
}
