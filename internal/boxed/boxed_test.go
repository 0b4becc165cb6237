package boxed

import (
	"strconv"
	"testing"
)

func TestBoxesAreSharedAndCapped(t *testing.T) {
	var names Strings
	first := names.Box("web")
	if again := names.Box("web"); again != first {
		t.Error("a string was boxed twice")
	}
	for i := range Max + 10 {
		names.Box("name-" + strconv.Itoa(i))
	}
	if n := names.Len(); n != Max {
		t.Errorf("%d strings kept, want the cap of %d", n, Max)
	}
	if allocs := testing.AllocsPerRun(100, func() { _ = names.Box("web") }); allocs != 0 {
		t.Errorf("boxing a kept string allocates %v times, want 0", allocs)
	}
}
