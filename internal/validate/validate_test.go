package validate

import (
	"errors"
	"testing"
)

func TestOnceRunsTheCheckOnceAndKeepsItsAnswer(t *testing.T) {
	for _, answer := range []error{nil, errors.New("port -1: must be 1 to 65535")} {
		var once Once
		runs := 0
		check := func() error { runs++; return answer }
		for range 3 {
			if err := once.Do(check); err != answer {
				t.Fatalf("Do = %v, want %v", err, answer)
			}
		}
		if runs != 1 {
			t.Errorf("answer %v: the check ran %d times, want 1", answer, runs)
		}
	}
}
