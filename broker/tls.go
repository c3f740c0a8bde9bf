package broker

import (
	"crypto/tls"
	"fmt"
	"net"
	"sync/atomic"
)

// loadCertificate reads a PEM certificate chain and its key.
func loadCertificate(certFile, keyFile string) (*tls.Certificate, error) {
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate %s with key %s: %w", certFile, keyFile, err)
	}
	return &c, nil
}

// certs holds the TCP listener's certificate; a reload swaps it, and
// connections from then on get the new one.
type certs struct {
	certFile, keyFile string
	cur               atomic.Pointer[tls.Certificate]
}

func newCerts(certFile, keyFile string) (*certs, error) {
	c := &certs{certFile: certFile, keyFile: keyFile}
	return c, c.reload()
}

// reload reads the files again; on error the old certificate stays.
func (c *certs) reload() error {
	cert, err := loadCertificate(c.certFile, c.keyFile)
	if err != nil {
		return err
	}
	c.cur.Store(cert)
	return nil
}

// listener wraps ln in TLS 1.2 or newer with the current certificate.
func (c *certs) listener(ln net.Listener) net.Listener {
	return tls.NewListener(ln, &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return c.cur.Load(), nil
		},
	})
}
