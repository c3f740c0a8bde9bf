// Package peercred reads, from the kernel, who is on the other end of a
// Unix socket: the process id, user and group it had when it connected
// (SO_PEERCRED) and its supplementary groups (SO_PEERGROUPS, Linux 4.13),
// which is how a systemd service's SupplementaryGroups= is seen.
package peercred

import (
	"errors"
	"fmt"
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Cred is what the kernel says about a socket's peer.
type Cred struct {
	PID    int32
	UID    uint32
	GID    uint32   // primary group
	Groups []uint32 // supplementary groups; nil where the kernel cannot tell
}

// InGroup reports whether gid is the peer's primary or a supplementary group.
func (c Cred) InGroup(gid uint32) bool {
	if c.GID == gid {
		return true
	}
	for _, g := range c.Groups {
		if g == gid {
			return true
		}
	}
	return false
}

// Read returns the credentials of c's peer.
func Read(c *net.UnixConn) (Cred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return Cred{}, fmt.Errorf("peer credentials: %w", err)
	}
	var cred Cred
	var opErr error
	err = raw.Control(func(fd uintptr) {
		var uc *unix.Ucred
		uc, opErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if opErr != nil {
			opErr = fmt.Errorf("SO_PEERCRED: %w", opErr)
			return
		}
		cred = Cred{PID: uc.Pid, UID: uc.Uid, GID: uc.Gid}
		cred.Groups = peerGroups(int(fd))
	})
	if err == nil {
		err = opErr
	}
	if err != nil {
		return Cred{}, fmt.Errorf("peer credentials: %w", err)
	}
	return cred, nil
}

// peerGroups reads SO_PEERGROUPS, growing the buffer while the kernel says
// it is too small; nil if the kernel does not support it.
func peerGroups(fd int) []uint32 {
	for n := 64; n <= 1<<16; n *= 4 {
		buf := make([]uint32, n)
		size := uint32(len(buf) * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		switch {
		case errno == 0:
			return buf[:size/4]
		case errors.Is(errno, unix.ERANGE):
			continue
		default:
			return nil
		}
	}
	return nil
}
