// Package bootid tells which boot of the machine this is.
package bootid

import (
	"os"
	"strings"
)

// Path is where Linux publishes a random id for each boot.
const Path = "/proc/sys/kernel/random/boot_id"

// Read returns the current boot id, or "unknown" where the kernel has none.
func Read() string {
	b, err := os.ReadFile(Path)
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}
