package store

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Config is the store section of the configuration.
type Config struct {
	// Dir holds the database (in Dir/db) and its bookkeeping.
	Dir string `yaml:"dir" env:"TARSMQ_STORE_DIR" env-description:"directory of the broker's database"`
	// DirMode and DirGroup are given to Dir when the broker creates it. A
	// directory others can write to is refused, whoever created it.
	DirMode  string `yaml:"dir_mode" env:"TARSMQ_STORE_DIR_MODE" env-description:"mode of store.dir when the broker creates it, octal"`
	DirGroup string `yaml:"dir_group" env:"TARSMQ_STORE_DIR_GROUP" env-description:"group (name or gid) of store.dir when the broker creates it"`
	// Sync makes every health and retained write reach the disk before the
	// publisher's PUBACK, so it survives power loss as well as kill -9.
	Sync bool `yaml:"sync" env:"TARSMQ_STORE_SYNC" env-description:"fsync health and retained writes before acknowledging them"`
	// History bounds each service's health history.
	History HistoryConfig `yaml:"history"`
}

// HistoryConfig bounds the health history kept per service.
type HistoryConfig struct {
	MaxPerService int           `yaml:"max_per_service" env:"TARSMQ_STORE_HISTORY_MAX_PER_SERVICE" env-description:"health records kept per service"`
	MaxAge        time.Duration `yaml:"max_age" env:"TARSMQ_STORE_HISTORY_MAX_AGE" env-description:"age after which health records expire"`
}

// DefaultConfig keeps 1000 health records per service for 30 days and
// syncs health and retained writes.
func DefaultConfig() Config {
	return Config{
		Dir:     DefaultDir(),
		DirMode: "0700",
		Sync:    true,
		History: HistoryConfig{MaxPerService: 1000, MaxAge: 30 * 24 * time.Hour},
	}
}

// DefaultDir is $STATE_DIRECTORY under systemd, else
// $XDG_STATE_HOME/tarsmq, else ~/.local/state/tarsmq.
func DefaultDir() string {
	if dir, _, _ := strings.Cut(os.Getenv("STATE_DIRECTORY"), ":"); dir != "" {
		return dir
	}
	if dir := os.Getenv("XDG_STATE_HOME"); dir != "" {
		return filepath.Join(dir, "tarsmq")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "tarsmq")
	}
	return "" // Validate says what to set
}

// dirMode parses DirMode.
func (c Config) dirMode() (os.FileMode, error) {
	n, err := strconv.ParseUint(c.DirMode, 8, 32)
	if err != nil || n > 0o777 {
		return 0, fmt.Errorf("bad mode %q", c.DirMode)
	}
	return os.FileMode(n), nil
}

// dirGroup resolves DirGroup, -1 when unset.
func (c Config) dirGroup() (int, error) {
	if c.DirGroup == "" {
		return -1, nil
	}
	if gid, err := strconv.Atoi(c.DirGroup); err == nil {
		return gid, nil
	}
	g, err := user.LookupGroup(c.DirGroup)
	if err != nil {
		return 0, fmt.Errorf("store.dir_group: no group %q on this machine", c.DirGroup)
	}
	return strconv.Atoi(g.Gid)
}

// Validate names each bad key and its fix.
func (c Config) Validate() error {
	var errs []error
	switch {
	case c.Dir == "":
		errs = append(errs, errors.New("store.dir: no default could be found (HOME is not set); set store.dir or TARSMQ_STORE_DIR"))
	case !filepath.IsAbs(c.Dir):
		errs = append(errs, fmt.Errorf("store.dir: %q is relative; use an absolute path such as /var/lib/tarsmq", c.Dir))
	}
	if m, err := c.dirMode(); err != nil {
		errs = append(errs, fmt.Errorf("store.dir_mode: %q is not an octal mode; use e.g. \"0700\" or \"0750\"", c.DirMode))
	} else if m&0o002 != 0 {
		errs = append(errs, fmt.Errorf("store.dir_mode: %q lets everyone write the store; use e.g. \"0700\" or \"0750\"", c.DirMode))
	}
	if c.History.MaxPerService < 1 {
		errs = append(errs, fmt.Errorf("store.history.max_per_service: %d must be at least 1, e.g. 1000", c.History.MaxPerService))
	}
	if c.History.MaxAge < time.Second {
		errs = append(errs, fmt.Errorf("store.history.max_age: %v is too short; use at least 1s, e.g. 720h", c.History.MaxAge))
	}
	return errors.Join(errs...)
}
