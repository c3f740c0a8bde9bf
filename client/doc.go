// Package client is what on-device Go services import to join the bus.
package client
