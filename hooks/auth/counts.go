package auth

import "sync"

// counters count refusals by reason and denials by action.
type counters struct {
	mu      sync.Mutex
	refusal map[string]uint64
	denial  map[string]uint64
}

func (c *counters) init() {
	c.refusal = map[string]uint64{}
	c.denial = map[string]uint64{}
}

func (c *counters) refused(reason string) {
	c.mu.Lock()
	c.refusal[reason]++
	c.mu.Unlock()
}

func (c *counters) denied(action string) {
	c.mu.Lock()
	c.denial[action]++
	c.mu.Unlock()
}

// Refusals returns how many connections were refused, by reason
// (RefusedMaxClients, RefusedPassword, ...).
func (h *Hook) Refusals() map[string]uint64 { return h.counts.copy(&h.counts.refusal) }

// Denials returns how many publishes and subscriptions the ACL denied, by
// action ("publish", "subscribe").
func (h *Hook) Denials() map[string]uint64 { return h.counts.copy(&h.counts.denial) }

func (c *counters) copy(m *map[string]uint64) map[string]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]uint64, len(*m))
	for k, v := range *m {
		out[k] = v
	}
	return out
}
