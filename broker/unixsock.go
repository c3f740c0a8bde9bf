package broker

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// unixSocket is a bound Unix socket and the lock that says this process owns
// its path.
type unixSocket struct {
	ln   *net.UnixListener
	path string
	lock *os.File
	ino  uint64
}

// listenUnix binds a Unix socket at path with the given file mode, owner
// and group (uid, gid -1: leave it). A stale socket file is replaced; a socket another
// process serves is not: the lock file beside it tells a running tarsmq, and a
// test connection tells any other server. The socket appears at path with its
// final mode and group already set.
func listenUnix(path string, mode os.FileMode, uid, gid int) (_ *unixSocket, err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if err := checkSocketDir(dir); err != nil {
		return nil, err
	}
	lock, err := lockSocket(path)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = lock.Close()
		}
	}()
	if err := checkExisting(path); err != nil {
		return nil, err
	}

	// Bind under a temporary name, set mode and group, then rename into
	// place: clients never see the socket with the wrong permissions.
	bindPath := filepath.Join(dir, ".tarsmq-"+strconv.Itoa(os.Getpid()))
	if len(bindPath) > maxSocketPath {
		bindPath = path
	}
	_ = os.Remove(bindPath)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: bindPath, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false)
	defer func() {
		if err != nil {
			_ = ln.Close()
			_ = os.Remove(bindPath)
		}
	}()
	if err := os.Chmod(bindPath, mode); err != nil {
		return nil, fmt.Errorf("set socket mode: %w", err)
	}
	if uid >= 0 || gid >= 0 {
		if err := os.Chown(bindPath, uid, gid); err != nil {
			return nil, fmt.Errorf("set socket owner %d and group %d (-1: unchanged): %w (another owner needs root; another group, that the broker's user belongs to it)", uid, gid, err)
		}
	}
	if bindPath != path {
		if err := os.Rename(bindPath, path); err != nil {
			return nil, fmt.Errorf("move socket into place: %w", err)
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	return &unixSocket{ln: ln, path: path, lock: lock, ino: inode(fi)}, nil
}

// checkSocketDir refuses a directory where another user could replace the
// socket.
func checkSocketDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if fi.Mode().Perm()&0o002 != 0 && fi.Mode()&fs.ModeSticky == 0 {
		return fmt.Errorf("socket directory %s is writable by everyone (mode %04o, no sticky bit): anyone could replace the socket; use a private directory such as /run/tarsmq", dir, fi.Mode().Perm())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() && st.Uid != 0 {
		return fmt.Errorf("socket directory %s belongs to uid %d, not to this user (uid %d) or root: its owner could replace the socket; use a directory of your own", dir, st.Uid, os.Geteuid())
	}
	return nil
}

// lockSocket takes an exclusive lock on path+".lock" for the life of the
// process, and writes our pid into it.
func lockSocket(path string) (*os.File, error) {
	f, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open socket lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		pid := make([]byte, 32)
		n, _ := f.ReadAt(pid, 0)
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s is in use by another tarsmq (pid %s); stop it or choose another listeners.unix.path",
				path, strings.TrimSpace(string(pid[:n])))
		}
		return nil, fmt.Errorf("lock %s.lock: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// checkExisting accepts a missing path or a stale socket file; it refuses a
// file that is not a socket and a socket some process still serves.
func checkExisting(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket; move it away or choose another listeners.unix.path", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		_ = c.Close()
		return fmt.Errorf("another server is listening on %s; stop it or choose another listeners.unix.path", path)
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return nil // stale: nobody listens, the rename replaces it
	}
	return fmt.Errorf("check existing socket %s: %w", path, err)
}

// Close stops listening, removes the socket file if it is still ours, and
// releases the lock.
func (u *unixSocket) Close() error {
	err := u.ln.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	if fi, serr := os.Lstat(u.path); serr == nil && inode(fi) == u.ino {
		if rerr := os.Remove(u.path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
	}
	return errors.Join(err, u.lock.Close())
}

func inode(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}
