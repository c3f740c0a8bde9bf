package broker

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

// webSocketServer upgrades HTTP requests to MQTT over WebSocket. Browsers
// send an Origin header; unless it is the listener's own host or one of
// allowed, the upgrade is refused, so a web page cannot reach the robot's bus
// through the user's browser.
type webSocketServer struct {
	http     *http.Server
	upgrader websocket.Upgrader
	allowed  []string
	log      *slog.Logger
}

func newWebSocketServer(allowedOrigins []string, log *slog.Logger) *webSocketServer {
	ws := &webSocketServer{allowed: allowedOrigins, log: log}
	ws.upgrader = websocket.Upgrader{
		Subprotocols:     []string{"mqtt"},
		CheckOrigin:      ws.checkOrigin,
		HandshakeTimeout: connectTimeout,
	}
	return ws
}

func (ws *webSocketServer) checkOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true // not a browser
	}
	u, err := url.Parse(origin)
	if err == nil && strings.EqualFold(u.Host, r.Host) {
		return true
	}
	if slices.Contains(ws.allowed, origin) {
		return true
	}
	ws.log.Warn("websocket upgrade refused: origin not allowed", "origin", origin,
		"fix", "add it to listeners.websocket.allowed_origins")
	return false
}

// serve runs the HTTP server on ln and hands each upgraded connection to
// establish, on the request's goroutine.
func (ws *webSocketServer) serve(ln net.Listener, establish func(net.Conn)) {
	ws.http = &http.Server{
		ReadHeaderTimeout: connectTimeout,
		ErrorLog:          slog.NewLogLogger(ws.log.Handler(), slog.LevelDebug),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c, err := ws.upgrader.Upgrade(w, r, nil)
			if err != nil {
				return // the upgrader has answered
			}
			establish(&wsConn{Conn: c.UnderlyingConn(), ws: c})
		}),
	}
	if err := ws.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		ws.log.Error("websocket listener stopped", "error", err)
	}
}

func (ws *webSocketServer) close() error {
	if ws.http == nil {
		return nil
	}
	return ws.http.Close()
}

// wsConn carries MQTT in binary WebSocket messages; one message may hold
// several packets or part of one.
type wsConn struct {
	net.Conn
	ws *websocket.Conn
	r  io.Reader
}

var errTextFrame = errors.New("websocket: MQTT needs binary messages, got another type")

func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			typ, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if typ != websocket.BinaryMessage {
				return 0, errTextFrame
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (c *wsConn) Write(p []byte) (int, error) {
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsConn) SetDeadline(t time.Time) error {
	return errors.Join(c.ws.SetReadDeadline(t), c.ws.SetWriteDeadline(t))
}
func (c *wsConn) SetReadDeadline(t time.Time) error  { return c.ws.SetReadDeadline(t) }
func (c *wsConn) SetWriteDeadline(t time.Time) error { return c.ws.SetWriteDeadline(t) }
func (c *wsConn) Close() error                       { return c.ws.Close() }
