package topic

import "strings"

// Intersects reports whether some topic name matches both filters a and b:
// "+" stands for exactly one level, "#" for zero or more remaining levels
// (so a/# intersects a), and a filter whose first level is a wildcard
// shares no topic with one whose first level starts with "$" [MQTT-4.7.2-1].
// Both arguments should be valid filters; for others the answer is
// unspecified but it does not panic. It does not allocate.
func Intersects(a, b string) bool {
	if dollarClash(a, b) || dollarClash(b, a) {
		return false
	}
	for {
		al, arest, amore := strings.Cut(a, "/")
		bl, brest, bmore := strings.Cut(b, "/")
		if al == "#" || bl == "#" {
			return true
		}
		if al != "+" && bl != "+" && al != bl {
			return false
		}
		switch {
		case !amore && !bmore:
			return true
		case !amore: // a ends here: b may only go on with "/#"
			return brest == "#"
		case !bmore:
			return arest == "#"
		}
		a, b = arest, brest
	}
}

// dollarClash reports whether wild starts with a wildcard and lit with "$":
// every topic lit matches starts with "$", and wild matches none of them.
func dollarClash(wild, lit string) bool {
	return strings.HasPrefix(lit, "$") && (strings.HasPrefix(wild, "+") || strings.HasPrefix(wild, "#"))
}
