// Package lograte keeps repeated log lines from flooding the journal (and
// wearing the SD card): each key may be logged once per window, and the next
// line that gets through says how many were held back.
package lograte

import (
	"sync"
	"time"
)

// maxKeys bounds the memory; past it the table starts empty again.
const maxKeys = 4096

// Limiter lets each key through once per Window. The zero value is not
// usable; use New.
type Limiter struct {
	window time.Duration
	mu     sync.Mutex
	seen   map[string]*state
}

type state struct {
	last       time.Time
	suppressed int
}

// New returns a Limiter with the given window.
func New(window time.Duration) *Limiter {
	return &Limiter{window: window, seen: make(map[string]*state)}
}

// Allow reports whether a line for key may be logged at now, and how many
// were suppressed since the last one that was.
func (l *Limiter) Allow(key string, now time.Time) (suppressed int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.seen[key]
	if s == nil {
		if len(l.seen) >= maxKeys {
			clear(l.seen)
		}
		s = &state{}
		l.seen[key] = s
	}
	if !s.last.IsZero() && now.Sub(s.last) < l.window {
		s.suppressed++
		return 0, false
	}
	n := s.suppressed
	s.last, s.suppressed = now, 0
	return n, true
}
