package lbpolicy

import (
	"strings"
	"sync"
	"testing"
)

// sequence picks n times from weights named a, b, c... and spells the
// picks, with usable deciding which are available.
func sequence(s *schedule, n int, usable func(int) bool) string {
	var out strings.Builder
	for range n {
		if m := s.pick(usable); m >= 0 {
			out.WriteByte(byte('a' + m))
		} else {
			out.WriteByte('-')
		}
	}
	return out.String()
}

func all(int) bool { return true }

func TestSmoothWeightedSequence(t *testing.T) {
	tests := []struct {
		name    string
		weights []int
		want    string
	}{
		{"weights_5_1_1_follow_nginx_sequence", []int{5, 1, 1}, "aabacaa" + "aabacaa"},
		{"weights_3_2_1_follow_nginx_sequence", []int{3, 2, 1}, "abacba" + "abacba"},
		{"equal_weights_are_round_robin", []int{1, 1, 1}, "abcabc"},
		{"weight_0_is_never_chosen", []int{2, 0, 1}, "acaaca"},
		{"scaled_weights_give_the_same_sequence", []int{10, 2, 2}, "aabacaa" + "aabacaa"},
		{"all_weights_0_choose_nothing", []int{0, 0}, "--"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sequence(newSchedule(tt.weights), len(tt.want), all); got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
}

func TestSmoothWeightedSkipsUnavailable(t *testing.T) {
	count := func(weights []int, down int, picks int) []int {
		s := newSchedule(weights)
		counts := make([]int, len(weights))
		for range picks {
			counts[s.pick(func(m int) bool { return m != down })]++
		}
		return counts
	}
	t.Run("share_of_a_down_upstream_goes_to_the_others_by_weight", func(t *testing.T) {
		if got := count([]int{5, 1, 1}, 0, 700); got[1] != 350 || got[2] != 350 {
			t.Errorf("a down: b, c got %v, want 350 each (weights 1:1)", got[1:])
		}
		if got := count([]int{5, 1, 1}, 1, 600); got[0] != 500 || got[2] != 100 {
			t.Errorf("b down: a, c got %d, %d, want 500, 100 (weights 5:1)", got[0], got[2])
		}
	})
	t.Run("nothing_available_gives_no_upstream", func(t *testing.T) {
		if m := newSchedule([]int{1, 2}).pick(func(int) bool { return false }); m != -1 {
			t.Errorf("picked %d, want -1", m)
		}
	})
	t.Run("an_upstream_back_from_down_gets_its_share_with_no_burst", func(t *testing.T) {
		s := newSchedule([]int{5, 1, 1})
		down := true
		usable := func(m int) bool { return m != 0 || !down }
		sequence(s, 100, usable)
		down = false
		picks := sequence(s, 70, all)
		for i := 0; i+7 <= len(picks); i++ {
			if n := strings.Count(picks[i:i+7], "a"); n > 5 {
				t.Fatalf("a got %d of 7 picks at %d after recovering (%s), want at most its weight 5", n, i, picks)
			}
		}
		if n := strings.Count(picks, "a"); n != 50 {
			t.Errorf("a got %d of 70 picks after recovering, want 50", n)
		}
	})
}

func TestSmoothWeightedConcurrentPicksFillWholeCycles(t *testing.T) {
	weights := []int{5, 3, 1, 1}
	const cycles, goroutines = 1000, 8
	s := newSchedule(weights)
	counts := make([][]int, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		counts[g] = make([]int, len(weights))
		wg.Go(func() {
			for range cycles * 10 / goroutines {
				counts[g][s.pick(all)]++
			}
		})
	}
	wg.Wait()
	for m, w := range weights {
		total := 0
		for g := range goroutines {
			total += counts[g][m]
		}
		if total != cycles*w {
			t.Errorf("member %d: %d picks in %d cycles, want exactly %d", m, total, cycles, cycles*w)
		}
	}
}

func TestSchedulePickDoesNotAllocate(t *testing.T) {
	s := newSchedule([]int{5, 1, 1})
	if allocs := testing.AllocsPerRun(1000, func() { s.pick(all) }); allocs != 0 {
		t.Errorf("pick allocates %v times, want 0", allocs)
	}
}
