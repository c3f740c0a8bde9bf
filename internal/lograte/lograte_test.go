package lograte

import (
	"testing"
	"time"
)

func TestOncePerWindowWithCount(t *testing.T) {
	l := New(10 * time.Second)
	t0 := time.Unix(1000, 0)
	if n, ok := l.Allow("a", t0); !ok || n != 0 {
		t.Fatalf("first: %d %v", n, ok)
	}
	for i := 1; i <= 3; i++ {
		if _, ok := l.Allow("a", t0.Add(time.Duration(i)*time.Second)); ok {
			t.Fatal("allowed inside the window")
		}
	}
	if _, ok := l.Allow("b", t0.Add(time.Second)); !ok {
		t.Fatal("another key was held back")
	}
	if n, ok := l.Allow("a", t0.Add(10*time.Second)); !ok || n != 3 {
		t.Fatalf("after the window: %d %v, want 3 suppressed", n, ok)
	}
}
