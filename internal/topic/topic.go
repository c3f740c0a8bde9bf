// Package topic matches MQTT topic names against topic filters.
package topic

import (
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// Match reports whether topic matches filter: "+" matches one level, a
// trailing "#" that level's parent and everything below it, and a topic
// starting with "$" matches no filter that starts with a wildcard
// [MQTT-4.7.2-1]. It does not allocate.
func Match(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	for {
		fl, frest, fmore := strings.Cut(filter, "/")
		if fl == "#" {
			return true
		}
		tl, trest, tmore := strings.Cut(topic, "/")
		if fl != "+" && fl != tl {
			return false
		}
		switch {
		case !fmore && !tmore:
			return true
		case !tmore: // topic ends: only "/#" may follow in the filter
			return frest == "#"
		case !fmore:
			return false
		}
		filter, topic = frest, trest
	}
}

// ValidFilter reports whether filter is a valid MQTT topic filter.
func ValidFilter(filter string) bool { return filter != "" && mqtt.IsValidFilter(filter, false) }
