// Package envelope is the JSON message contract shared by the broker's hooks
// and the client: {"id","type","ts","source","data"} plus optional "correlate".
package envelope
