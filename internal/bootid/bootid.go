// Package bootid tells which boot of the machine this is.
package bootid

import (
	"os"
	"strings"
)

// Path is where Linux publishes a random id for each boot.
const Path = "/proc/sys/kernel/random/boot_id"

// Unknown is the boot id Read returns when the kernel's cannot be read.
const Unknown = "unknown"

// Read returns the current boot id, or Unknown where the kernel has none or
// /proc/sys is hidden (systemd's ProcSubset=pid).
func Read() string {
	b, err := os.ReadFile(Path)
	if err != nil {
		return Unknown
	}
	return strings.TrimSpace(string(b))
}
