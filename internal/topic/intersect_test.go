package topic

import (
	"strings"
	"testing"
)

func TestIntersects(t *testing.T) {
	cases := []struct {
		a, b string
		want bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/+", "a/b", true},
		{"a/+", "+/b", true},
		{"a/+", "b/+", false},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"a/#", "ab/#", false},
		{"a/+", "a", false},
		{"a/+", "a/b/c", false},
		{"a/+/#", "a", false},
		{"a/+/#", "a/b", true},
		{"#", "a/b", true},
		{"#", "#", true},
		{"+", "+", true},
		{"+/+", "+", false},
		{"+/health/#", "system/health/stt", true},
		{"+/health/#", "system/keepalive/#", false},
		{"system/health/+", "system/health", false},
		{"system/health/+", "system/health/", true},
		{"a//b", "a/+/b", true},
		{"#", "$SYS/#", false},
		{"$SYS/#", "#", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/x", "+/#", false},
		{"$SYS/#", "$SYS/+", true},
		{"$SYS/+", "$SYS/broker/uptime", false},
		{"$SYS", "$SYS/#", true},
		{"a/$x", "a/+", true}, // "$" only matters on the first level
		{"#", "+", true},
	}
	for _, c := range cases {
		if got := Intersects(c.a, c.b); got != c.want {
			t.Errorf("Intersects(%q, %q) = %v, want %v", c.a, c.b, got, c.want)
		}
		if got := Intersects(c.b, c.a); got != c.want {
			t.Errorf("Intersects(%q, %q) = %v, want %v (swapped)", c.b, c.a, got, c.want)
		}
	}
}

// TestIntersectsAgreesWithMatch checks Intersects against a brute-force
// search over every topic of up to 4 levels from a small alphabet, for
// every valid filter of up to 3 levels.
func TestIntersectsAgreesWithMatch(t *testing.T) {
	filters := combine([]string{"a", "b", "$s", "", "+", "#"}, 3, func(levels []string) bool {
		for i, l := range levels {
			if l == "#" && i != len(levels)-1 {
				return false
			}
		}
		return true
	})
	topics := combine([]string{"a", "b", "$s", "", "c"}, 4, nil)
	for _, f := range filters {
		for _, g := range filters {
			want := false
			for _, tp := range topics {
				if Match(f, tp) && Match(g, tp) {
					want = true
					break
				}
			}
			if got := Intersects(f, g); got != want {
				t.Errorf("Intersects(%q, %q) = %v, brute force says %v", f, g, got, want)
			}
		}
	}
}

// combine returns every "/"-joined sequence of 1 to n levels that keep
// accepts (all of them if keep is nil).
func combine(levels []string, n int, keep func([]string) bool) []string {
	var out []string
	var walk func(prefix []string)
	walk = func(prefix []string) {
		if len(prefix) > 0 && (keep == nil || keep(prefix)) {
			out = append(out, strings.Join(prefix, "/"))
		}
		if len(prefix) == n {
			return
		}
		for _, l := range levels {
			walk(append(prefix[:len(prefix):len(prefix)], l))
		}
	}
	walk(nil)
	return out
}

func BenchmarkIntersects(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		Intersects("+/health/#", "system/health/stt")
		Intersects("robot/+/joint/+/state", "robot/arm/#")
	}
}
