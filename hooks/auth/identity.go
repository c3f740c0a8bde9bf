package auth

import (
	"errors"
	"fmt"
	"os/user"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/tarsmq/tarsmq/internal/peercred"
	"github.com/tarsmq/tarsmq/internal/userdb"
)

// identity is a compiled Identity. A user or group this machine does not
// know (yet: a package may create it later) is looked up again at each
// connection until it resolves.
type identity struct {
	byUser    bool
	who       string // the user or group as configured
	id        atomic.Int64
	name      string // "" : the user's name
	clientIDs []string
}

const unresolved = -1

func (i Identity) compile() (*identity, error) {
	ci := &identity{}
	switch {
	case i.User != "" && i.Group != "":
		return ci, errors.New("set user or group, not both")
	case i.User != "":
		ci.byUser, ci.who = true, i.User
	case i.Group != "":
		ci.who = i.Group
	default:
		return ci, errors.New("set user (a name or uid) or group (a name or gid)")
	}
	ci.id.Store(unresolved)
	ci.lookup()
	if i.Name != "" {
		if why := validName(i.Name); why != "" {
			return ci, fmt.Errorf("name %q %s", i.Name, why)
		}
	}
	ci.name = i.Name
	for j, p := range i.ClientIDs {
		if p == "" {
			return ci, fmt.Errorf("client_ids[%d] is empty", j)
		}
	}
	ci.clientIDs = i.ClientIDs
	return ci, nil
}

// lookup resolves the user or group, if it is not yet.
func (ci *identity) lookup() (uint32, bool) {
	if id := ci.id.Load(); id != unresolved {
		return uint32(id), true
	}
	lookup := lookupGroup
	if ci.byUser {
		lookup = lookupUser
	}
	id, err := lookup(ci.who)
	if err != nil {
		return 0, false
	}
	ci.id.Store(int64(id))
	return id, true
}

// unknown says what of ci this machine does not know, or "".
func (ci *identity) unknown() string {
	if _, ok := ci.lookup(); ok {
		return ""
	}
	if ci.byUser {
		return "user " + ci.who
	}
	return "group " + ci.who
}

func lookupUser(s string) (uint32, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return uint32(n), nil
	}
	u, err := user.Lookup(s)
	if err != nil {
		return 0, fmt.Errorf("no user %q on this machine (a name from /etc/passwd, or a numeric uid)", s)
	}
	n, err := strconv.ParseUint(u.Uid, 10, 32)
	return uint32(n), err
}

func lookupGroup(s string) (uint32, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return uint32(n), nil
	}
	g, err := user.LookupGroup(s)
	if err != nil {
		return 0, fmt.Errorf("no group %q on this machine (a name from /etc/group, or a numeric gid)", s)
	}
	n, err := strconv.ParseUint(g.Gid, 10, 32)
	return uint32(n), err
}

// UserName is the name of uid: from /etc/passwd, else, for a systemd
// DynamicUser= service, from systemd's user database at userDB (a static
// binary cannot ask NSS), else "uid-N".
func UserName(uid uint32, userDB string) string {
	if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil && validName(u.Username) == "" {
		return u.Username
	}
	if userDB != "" {
		if name, err := userdb.LookupUID(userDB, uid); err == nil && validName(name) == "" {
			return name
		}
	}
	return "uid-" + strconv.FormatUint(uint64(uid), 10)
}

// resolve maps a socket peer to its identity and the client ids it may
// use: the first entry that matches wins. nameOf names a uid.
func (p *policy) resolve(c peercred.Cred, nameOf func(uint32) string) (name string, clientIDs []string, ok bool) {
	for _, id := range p.identities {
		n, ok := id.lookup()
		if ok && ((id.byUser && c.UID == n) || (!id.byUser && c.InGroup(n))) {
			name = id.name
			if name == "" {
				name = nameOf(c.UID)
			}
			clientIDs = id.clientIDs
			if len(clientIDs) == 0 {
				clientIDs = []string{name, name + ":*"}
			}
			return name, clientIDs, true
		}
	}
	return "", nil, false
}

// globMatch matches s against pattern, where "*" stands for any run of
// characters and nothing else is special.
func globMatch(pattern, s string) bool {
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return s == pattern
	}
	if !strings.HasPrefix(s, parts[0]) {
		return false
	}
	s = s[len(parts[0]):]
	for _, mid := range parts[1 : len(parts)-1] {
		i := strings.Index(s, mid)
		if i < 0 {
			return false
		}
		s = s[i+len(mid):]
	}
	return strings.HasSuffix(s, parts[len(parts)-1])
}

// anyMatch reports whether s matches one of patterns.
func anyMatch(patterns []string, s string) bool {
	for _, p := range patterns {
		if globMatch(p, s) {
			return true
		}
	}
	return false
}
