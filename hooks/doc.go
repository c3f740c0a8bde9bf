// Package hooks holds the broker's mochi hooks, one subpackage per hook.
package hooks
