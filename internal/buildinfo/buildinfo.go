// Package buildinfo says which build of tarsmq is running.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set at link time by the Makefile:
//
//	-X github.com/tarsmq/tarsmq/internal/buildinfo.Version=v1.2.3
var (
	Version = ""
	Commit  = ""
	Date    = ""
)

// Info is the version, commit and build date of this binary. Values not set
// at link time come from the Go build's own record (module version, VCS
// revision and time), else "unknown".
type Info struct {
	Version, Commit, Date string
}

// Get returns this binary's Info.
func Get() Info {
	i := Info{Version: Version, Commit: Commit, Date: Date}
	dirty := false
	if bi, ok := debug.ReadBuildInfo(); ok {
		if i.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			i.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision" && i.Commit == "":
				i.Commit = s.Value
			case s.Key == "vcs.time" && i.Date == "":
				i.Date = s.Value
			case s.Key == "vcs.modified" && s.Value == "true" && Commit == "":
				dirty = true
			}
		}
	}
	if dirty && i.Commit != "" {
		i.Commit += "-dirty"
	}
	for _, p := range []*string{&i.Version, &i.Commit, &i.Date} {
		if *p == "" {
			*p = "unknown"
		}
	}
	return i
}

// String is the line `tarsmq version` prints.
func (i Info) String() string {
	return fmt.Sprintf("tarsmq %s (commit %s, built %s, %s %s/%s)",
		i.Version, i.Commit, i.Date, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
