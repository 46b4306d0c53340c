package connstate

import (
	"testing"
	"time"
)

func TestBackoffNeverWaitsLongerThanItsMaximum(t *testing.T) {
	const initial, maxDelay = 100 * time.Millisecond, 2 * time.Second
	for n := 1; n < 70; n++ {
		for range 200 {
			if d := backoffDelay(initial, maxDelay, n); d > maxDelay {
				t.Fatalf("attempt %d: %v, beyond the %v cap", n, d, maxDelay)
			}
		}
	}
	seen := map[time.Duration]bool{}
	for range 200 {
		d := backoffDelay(initial, maxDelay, 1)
		if d < 80*time.Millisecond || d > 120*time.Millisecond {
			t.Fatalf("first delay %v, want 100 ms ±20 %%", d)
		}
		seen[d] = true
	}
	if len(seen) < 2 {
		t.Fatal("the delays are not jittered")
	}
	for range 200 {
		if d := backoffDelay(initial, maxDelay, 10); d < 1600*time.Millisecond {
			t.Fatalf("capped delay %v, want at most 20 %% below the cap", d)
		}
	}
}
