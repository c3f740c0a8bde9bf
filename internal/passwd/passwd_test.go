package passwd_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/tarsmq/tarsmq/internal/passwd"
)

const cost = bcrypt.MinCost // fast tests

// hash is a bcrypt hash of pw at the minimum cost.
func hash(t testing.TB, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), cost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

// writeFile writes content to a new file with mode 0600 and returns its path.
func writeFile(t testing.TB, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func load(t testing.TB, path string) *passwd.File {
	t.Helper()
	f, err := passwd.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestSetLoadVerify(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	if err := passwd.Set(path, "stt-worker", "s3cret", cost); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("new file has mode %v, want 0640", fi.Mode().Perm())
	}
	f := load(t, path)
	if !f.Verify("stt-worker", "s3cret") {
		t.Error("right password refused")
	}
	for _, pw := range []string{"", "s3cre", "s3cret\n", "S3cret"} {
		if f.Verify("stt-worker", pw) {
			t.Errorf("wrong password %q accepted", pw)
		}
	}
	if f.Verify("nobody", "s3cret") || f.Verify("", "") {
		t.Error("unknown user accepted")
	}
	if got := f.Users(); !slices.Equal(got, []string{"stt-worker"}) {
		t.Errorf("Users() = %q", got)
	}
}

func TestSetReplaceKeepsOtherLines(t *testing.T) {
	content := "# robot services\n\nzed:" + hash(t, "z") + "\n# the STT worker\nstt:" + hash(t, "old") + "\n  # indented comment\nalice:" + hash(t, "a") + "\n"
	path := writeFile(t, content)
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := passwd.Set(path, "stt", "new", cost); err != nil {
		t.Fatal(err)
	}
	if err := passwd.Set(path, "bob", "b", cost); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	want := strings.Split(strings.TrimSuffix(content, "\n"), "\n")
	if len(lines) != len(want)+1 || !strings.HasPrefix(lines[len(lines)-1], "bob:$2a$04$") {
		t.Fatalf("file after Set:\n%s", data)
	}
	for i, w := range want {
		if strings.HasPrefix(w, "stt:") {
			if lines[i] == w || !strings.HasPrefix(lines[i], "stt:$2a$") {
				t.Errorf("line %d: stt not replaced in place: %q", i+1, lines[i])
			}
		} else if lines[i] != w {
			t.Errorf("line %d = %q, want %q", i+1, lines[i], w)
		}
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v not kept", fi.Mode().Perm())
	}
	f := load(t, path)
	if !f.Verify("stt", "new") || f.Verify("stt", "old") || !f.Verify("zed", "z") || !f.Verify("alice", "a") || !f.Verify("bob", "b") {
		t.Error("wrong passwords after Set")
	}
	if got := f.Users(); !slices.Equal(got, []string{"alice", "bob", "stt", "zed"}) {
		t.Errorf("Users() = %q", got)
	}
	if matches, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*tmp*")); len(matches) > 0 {
		t.Errorf("temporary files left: %q", matches)
	}
}

func TestSetRefuses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	for _, c := range []struct{ user, pw string }{
		{"", "x"}, {"a:b", "x"}, {"a b", "x"}, {"a\tb", "x"}, {"ok", ""}, {"ok", strings.Repeat("x", 73)},
	} {
		if err := passwd.Set(path, c.user, c.pw, cost); err == nil {
			t.Errorf("Set(%q, %q) succeeded", c.user, c.pw)
		}
	}
	if err := passwd.Set(path, "ok", "x", 3); err == nil || !strings.Contains(err.Error(), "cost 3") {
		t.Errorf("cost 3: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused Set created the file: %v", err)
	}
}

func TestDelete(t *testing.T) {
	path := writeFile(t, "# c\na:"+hash(t, "a")+"\nb:"+hash(t, "b")+"\n")
	if err := passwd.Delete(path, "a"); err != nil {
		t.Fatal(err)
	}
	f := load(t, path)
	if got := f.Users(); !slices.Equal(got, []string{"b"}) || f.Verify("a", "a") || !f.Verify("b", "b") {
		t.Errorf("after Delete: users %q", got)
	}
	if data, _ := os.ReadFile(path); !strings.HasPrefix(string(data), "# c\nb:") {
		t.Errorf("after Delete:\n%s", data)
	}
	if err := passwd.Delete(path, "a"); !errors.Is(err, passwd.ErrUnknownUser) {
		t.Errorf("Delete of an absent user: %v", err)
	}
}

func TestLoadBadLines(t *testing.T) {
	h := hash(t, "x")
	for name, c := range map[string]struct {
		content string
		want    []string
	}{
		"no colon":    {"a:" + h + "\n\njusttext\n", []string{"line 3: want user:bcrypt-hash"}},
		"empty user":  {"# c\n:" + h + "\n", []string{"line 2: empty user name"}},
		"space":       {"a b:" + h + "\n", []string{"line 1:", "whitespace"}},
		"plaintext":   {"a:hunter2\n", []string{"line 1:", "not bcrypt"}},
		"md5":         {"a:$1$abcdefgh$abcdefghijklmnopqrstuv\n", []string{"line 1:", "not bcrypt"}},
		"sha512":      {"a:$6$" + strings.Repeat("a", 55) + "\n", []string{"line 1:", "not bcrypt"}},
		"bad version": {"a:$2x$" + h[4:] + "\n", []string{"line 1:", "not bcrypt"}},
		"bad cost":    {"a:$2a$99$" + h[7:] + "\n", []string{"line 1:", "not bcrypt"}},
		"short":       {"a:" + h[:59] + "\n", []string{"line 1:", "not bcrypt"}},
		"duplicate":   {"a:" + h + "\nb:" + h + "\na:" + h + "\n", []string{`line 3: user "a" is already on line 1`}},
		"two errors":  {"x\ny\n", []string{"line 1:", "line 2:"}},
	} {
		path := writeFile(t, c.content)
		_, err := passwd.Load(path)
		if err == nil {
			t.Errorf("%s: loaded", name)
			continue
		}
		for _, w := range append(c.want, path) {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", name, err, w)
			}
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: error shows the line: %v", name, err)
		}
	}
}

func TestLoadAcceptsBcryptVariants(t *testing.T) {
	h := hash(t, "pw")
	path := writeFile(t, "a:"+h+"\nb:$2b$"+h[4:]+"\r\n  c:$2y$"+h[4:]+"  \n")
	f := load(t, path)
	for _, u := range []string{"a", "b", "c"} {
		if !f.Verify(u, "pw") {
			t.Errorf("%s refused", u)
		}
	}
	if f := load(t, writeFile(t, "")); len(f.Users()) != 0 || f.Verify("", "") {
		t.Error("empty file")
	}
}

func TestLoadRefusesOpenModes(t *testing.T) {
	for _, mode := range []os.FileMode{0o644, 0o604, 0o602, 0o666} {
		path := writeFile(t, "")
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, err := passwd.Load(path)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("mode %04o", mode)) || !strings.Contains(err.Error(), "chmod 640 "+path) {
			t.Errorf("mode %o: %v", mode, err)
		}
		if err := passwd.Set(path, "a", "a", cost); err == nil {
			t.Errorf("mode %o: Set edited the file", mode)
		}
	}
	if _, err := passwd.Load(filepath.Join(t.TempDir(), "none")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// An unknown user costs a bcrypt comparison at the users' cost too.
func TestVerifyUnknownUserTakesAsLong(t *testing.T) {
	h, err := bcrypt.GenerateFromPassword([]byte("pw"), 6)
	if err != nil {
		t.Fatal(err)
	}
	f := load(t, writeFile(t, "a:"+string(h)+"\n"))
	timeIt := func(user string) time.Duration {
		start := time.Now()
		for range 3 {
			if f.Verify(user, "wrong") {
				t.Fatalf("%s: wrong password accepted", user)
			}
		}
		return time.Since(start)
	}
	known, unknown := timeIt("a"), timeIt("nobody")
	if unknown < known/4 {
		t.Errorf("unknown user: %v, known user: %v", unknown, known)
	}
}

func TestVerifyConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	for _, u := range []string{"a", "b", "c"} {
		if err := passwd.Set(path, u, "pw-"+u, cost); err != nil {
			t.Fatal(err)
		}
	}
	f := load(t, path)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for _, u := range []string{"a", "b", "c", "d"} {
				if got, want := f.Verify(u, "pw-"+u), u != "d"; got != want {
					t.Errorf("goroutine %d: Verify(%q) = %v", i, u, got)
				}
				if f.Verify(u, "wrong") {
					t.Errorf("goroutine %d: wrong password of %q accepted", i, u)
				}
				_ = f.Users()
			}
		})
	}
	wg.Wait()
}

func FuzzLoad(f *testing.F) {
	h := hash(f, "pw")
	for _, s := range []string{"", "\n", "# c\n", "a:" + h + "\n", "a:" + h, "a:" + h + "\na:" + h, ":", "a:$2a$", "a:$2a$04$" + strings.Repeat("/", 53), "\r\n\x00:\xff"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "passwd")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		pf, err := passwd.Load(path)
		if err != nil {
			return
		}
		users := pf.Users()
		if !slices.IsSorted(users) {
			t.Errorf("Users() not sorted: %q", users)
		}
		for _, u := range users {
			if passwd.CheckUser(u) != nil {
				t.Errorf("loaded invalid user %q", u)
			}
		}
	})
}
