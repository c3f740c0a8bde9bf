// Package store will own the broker's one Badger database (retained messages,
// sessions, health records).
package store
