package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/tarsmq/tarsmq/internal/passwd"
)

// PasswdCommand adds, changes or deletes a user's password in a password
// file.
type PasswdCommand struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

const passwdHelp = `
Usage: tarsmq passwd [-D] [--cost N] FILE USER

Adds USER to the password file FILE, or changes USER's password, keeping
the other lines and comments; creates FILE with mode 0640 if it does not
exist. FILE holds one user:bcrypt-hash line per user.

On a terminal it asks for the password twice, without echo. Otherwise it
reads the password from the first line of standard input, so that scripts
can pipe it in:

	printf '%s\n' "$PASSWORD" | tarsmq passwd /etc/tarsmq/passwd stt-worker

-D deletes USER from FILE instead.
`

// Run sets or deletes the password.
func (c *PasswdCommand) Run(_ context.Context, args []string) error {
	fs := newFlagSet("tarsmq passwd", passwdHelp, c.Stderr)
	del := fs.Bool("D", false, "delete USER from FILE")
	cost := fs.Int("cost", passwd.DefaultCost, "bcrypt cost, 4 to 31: each step doubles the time every connection takes to authenticate")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		fs.Usage()
		return errors.New("passwd needs FILE and USER: tarsmq passwd /etc/tarsmq/passwd stt-worker")
	}
	file, user := fs.Arg(0), fs.Arg(1)
	if *del {
		if err := passwd.Delete(file, user); err != nil {
			return err
		}
		_, err := fmt.Fprintf(c.Stdout, "%s deleted from %s\n", user, file)
		return err
	}
	// Find what is wrong with the user name or the file before asking
	// for the password.
	if err := passwd.CheckUser(user); err != nil {
		return err
	}
	if _, err := os.Stat(file); err == nil {
		if _, err := passwd.Load(file); err != nil {
			return err
		}
	}
	pw, err := c.readPassword(user)
	if err != nil {
		return err
	}
	if err := passwd.Set(file, user, pw, *cost); err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.Stdout, "password for %s set in %s\n", user, file)
	return err
}

// readPassword asks for the password twice without echo when standard
// input is a terminal, and otherwise reads its first line.
func (c *PasswdCommand) readPassword(user string) (string, error) {
	if f, ok := c.Stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		ask := func(prompt string) (string, error) {
			fmt.Fprint(c.Stderr, prompt)
			pw, err := term.ReadPassword(int(f.Fd()))
			fmt.Fprintln(c.Stderr)
			if err != nil {
				return "", fmt.Errorf("read password: %w", err)
			}
			return string(pw), nil
		}
		pw, err := ask("Password for " + user + ": ")
		if err != nil {
			return "", err
		}
		if pw == "" {
			return "", errors.New("empty password: nothing changed")
		}
		again, err := ask("Again: ")
		if err != nil {
			return "", err
		}
		if again != pw {
			return "", errors.New("the passwords do not match: nothing changed")
		}
		return pw, nil
	}
	line, err := bufio.NewReader(c.Stdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read password from standard input: %w", err)
	}
	pw := strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
	if pw == "" {
		return "", errors.New("no password on the first line of standard input: nothing changed")
	}
	return pw, nil
}
