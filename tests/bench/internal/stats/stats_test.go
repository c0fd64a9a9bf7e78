package stats

import "testing"

func TestQuantile(t *testing.T) {
	vs := Sorted([]float64{10, 1, 9, 2, 8, 3, 7, 4, 6, 5})
	for _, c := range []struct{ q, want float64 }{{0.1, 1}, {0.5, 5}, {0.9, 9}, {0.99, 10}, {1, 10}, {0.01, 1}} {
		if got := Quantile(vs, c.q); got != c.want {
			t.Errorf("Quantile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
	if Quantile(nil, 0.5) != 0 {
		t.Errorf("Quantile of nothing is not 0")
	}
}

func TestSortedCopies(t *testing.T) {
	in := []float64{3, 1, 2}
	if out := Sorted(in); out[0] != 1 || in[0] != 3 {
		t.Errorf("Sorted(%v) = %v", in, out)
	}
}
