package bytesize

import "testing"

func TestSizes(t *testing.T) {
	for in, want := range map[string]Size{"1024": 1024, "4MiB": 4 << 20, "10 KB": 10000, "1GiB": 1 << 30, "2M": 2 << 20} {
		got, err := Parse(in)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-1", "4XB", "1.5MiB"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
	if s := Size(8 << 20).String(); s != "8MiB" {
		t.Errorf("String %s", s)
	}
}
