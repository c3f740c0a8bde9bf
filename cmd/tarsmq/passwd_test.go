package main_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/tarsmq/tarsmq/internal/passwd"
)

// runStdin runs tarsmq with args and stdin as its standard input.
func runStdin(t testing.TB, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(tarsmq, args...)
	cmd.Stdin = strings.NewReader(stdin)
	return runCmd(t, cmd)
}

// loadPasswd loads the password file at path.
func loadPasswd(t testing.TB, path string) *passwd.File {
	t.Helper()
	f, err := passwd.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestPasswdCommand(t *testing.T) {
	file := filepath.Join(t.TempDir(), "passwd")
	const cost = "4" // fast

	// Set, from a pipe: the first line, without its newline.
	out, errOut, code := runStdin(t, "s3cret-one\nignored\n", "passwd", "--cost", cost, file, "stt-worker")
	if code != 0 || out != "password for stt-worker set in "+file+"\n" {
		t.Fatalf("set: exit %d\n%s%s", code, out, errOut)
	}
	if strings.Contains(out+errOut, "s3cret") {
		t.Errorf("set printed the password:\n%s%s", out, errOut)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("new file: %v %v", fi, err)
	}
	f := loadPasswd(t, file)
	if !f.Verify("stt-worker", "s3cret-one") || f.Verify("stt-worker", "s3cret-one\n") || f.Verify("stt-worker", "ignored") {
		t.Error("the piped password is not the first line without its newline")
	}

	// Another user, with the default cost and no trailing newline.
	if out, errOut, code := runStdin(t, "tts-pw", "passwd", file, "tts-worker"); code != 0 {
		t.Fatalf("second user: exit %d\n%s%s", code, out, errOut)
	}
	data, _ := os.ReadFile(file)
	for line := range strings.Lines(string(data)) {
		user, hash, _ := strings.Cut(strings.TrimSpace(line), ":")
		want := map[string]int{"stt-worker": 4, "tts-worker": passwd.DefaultCost}[user]
		if c, err := bcrypt.Cost([]byte(hash)); err != nil || c != want {
			t.Errorf("%s: cost %d, want %d (%v)", user, c, want, err)
		}
	}

	// Change: the old password stops working, the other user keeps hers.
	if out, errOut, code := runStdin(t, "s3cret-two\r\n", "passwd", "--cost", cost, file, "stt-worker"); code != 0 {
		t.Fatalf("change: exit %d\n%s%s", code, out, errOut)
	}
	f = loadPasswd(t, file)
	if !f.Verify("stt-worker", "s3cret-two") || f.Verify("stt-worker", "s3cret-one") || !f.Verify("tts-worker", "tts-pw") {
		t.Error("wrong passwords after the change")
	}

	// Delete.
	out, errOut, code = run(t, nil, "passwd", "-D", file, "stt-worker")
	if code != 0 || out != "stt-worker deleted from "+file+"\n" {
		t.Fatalf("delete: exit %d\n%s%s", code, out, errOut)
	}
	if users := loadPasswd(t, file).Users(); !slices.Equal(users, []string{"tts-worker"}) {
		t.Errorf("users after delete: %q", users)
	}
	_, errOut, code = run(t, nil, "passwd", "-D", file, "stt-worker")
	if code != 1 || !strings.Contains(errOut, `"stt-worker"`) || !strings.Contains(errOut, "no such user") {
		t.Errorf("delete again: exit %d %q", code, errOut)
	}
}

func TestPasswdCommandRefuses(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "passwd")
	for _, c := range []struct {
		stdin string
		args  []string
		want  string
	}{
		{"pw\n", []string{"passwd"}, "Usage: tarsmq passwd"},
		{"pw\n", []string{"passwd", file}, "passwd needs FILE and USER"},
		{"pw\n", []string{"passwd", file, "a", "b"}, "passwd needs FILE and USER"},
		{"pw\n", []string{"passwd", "--bogus", file, "a"}, "flag provided but not defined"},
		{"", []string{"passwd", file, "a"}, "no password"},
		{"\n", []string{"passwd", file, "a"}, "no password"},
		{"pw\n", []string{"passwd", file, "a:b"}, "contains ':'"},
		{"pw\n", []string{"passwd", file, "a b"}, "whitespace"},
		{"pw\n", []string{"passwd", "--cost", "99", file, "a"}, "cost 99: use 4 to 31"},
		{"pw\n", []string{"passwd", filepath.Join(dir, "no", "dir", "passwd"), "a"}, "no such file or directory"},
	} {
		out, errOut, code := runStdin(t, c.stdin, c.args...)
		if code == 0 || !strings.Contains(errOut, c.want) || out != "" {
			t.Errorf("%q: exit %d, want %q in stderr\n%s%s", c.args, code, c.want, out, errOut)
		}
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Errorf("refused commands created the file: %v", err)
	}

	// A file other users can read is refused, naming the fix, before
	// any password is asked for.
	if err := os.WriteFile(file, []byte("# empty\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(file, 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := runStdin(t, "pw\n", "passwd", file, "a")
	if code != 1 || !strings.Contains(errOut, "chmod 640 "+file) {
		t.Errorf("world-readable file: exit %d %q", code, errOut)
	}

	out, errOut, code := run(t, nil, "passwd", "--help")
	if code != 0 || !strings.Contains(out+errOut, "-D") || !strings.Contains(out+errOut, "--cost") && !strings.Contains(out+errOut, "-cost") {
		t.Errorf("passwd --help: exit %d\n%s%s", code, out, errOut)
	}
	if out, _, _ := run(t, nil, "help"); !strings.Contains(out, "passwd ") {
		t.Errorf("help does not list passwd:\n%s", out)
	}
}
