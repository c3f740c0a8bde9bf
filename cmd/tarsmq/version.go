package main

import (
	"context"
	"fmt"
	"io"

	"github.com/tarsmq/tarsmq/internal/buildinfo"
)

// VersionCommand prints the build's version, commit and date.
type VersionCommand struct {
	Stdout io.Writer
}

const versionHelp = `
Usage: tarsmq version

Prints the version, commit and build date of this binary.
`

// Run prints the version line.
func (c *VersionCommand) Run(_ context.Context, args []string) error {
	fs := newFlagSet("tarsmq version", versionHelp, c.Stdout)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	_, err := fmt.Fprintln(c.Stdout, buildinfo.Get())
	return err
}
