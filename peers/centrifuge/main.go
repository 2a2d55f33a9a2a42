// The Centrifuge benchmark peer: the server users pick instead of Sluice,
// on the Centrifuge Go library (the core of Centrifugo) as Debian packages
// it (v0.15, protocol v0.3, Go 1.19), built in GOPATH mode by peers/build.
//
// It does the work of Sluice's benchmark tenant (peers/sluice-bench.toml)
// in Centrifuge's own JSON protocol rather than Sluice's:
//
//   - wss only (Go's crypto/tls: TLS 1.3 and 1.2, the same certificate,
//     X25519 / P-256 / P-384, AEAD suites, ALPN http/1.1, session tickets);
//     the WebSocket upgrade on /ws/bench (404 elsewhere), Origin absent or
//     exactly https://bench.example.com (403 otherwise);
//   - an HS256 JWT in the connect command (the first command on the
//     connection, Centrifuge's way; not at the upgrade): HS256 pinned,
//     issuer sluice-bench, audience sluice, exp required, nbf, 30 s leeway,
//     sub required. A token that fails closes the connection with
//     Centrifuge's disconnect 3002 "invalid token"; an expired one is
//     answered with error 109 "token expired" (Centrifuge's convention: the
//     client refreshes). The connection closes when the token expires;
//   - an RPC `echo` that validates its data against peers/schemas/echo.json
//     (gojsonschema, compiled once) and answers with the data unchanged;
//     data that fails gets error 400 "schema_invalid: <what failed>"; any
//     other RPC method error 104 "method not found";
//   - `room:{id}` channels anyone may subscribe to, and `user:{sub}` only
//     its owner; publishing to a room needs the `chat:write` scope (claim
//     `scope`, space-separated) and data valid against
//     peers/schemas/chat.send.json; refusals are error 103 "permission
//     denied" or 400 "schema_invalid: ...". A publication goes through
//     Centrifuge's in-memory broker to every subscriber.
//
// How Centrifuge's work differs from Sluice's (docs/performance-round3.md):
// every command is decoded with encoding/json, replies queue per connection
// and a writer goroutine sends up to 4 queued replies in one WebSocket
// frame, newline-separated; no handler sandbox, no rate limits.
//
// Usage:
//
//	centrifuge-peer --listen 127.0.0.1:0 --cert C --key K --secret-file F \
//	    [--schemas DIR]
//
// (or the secret in $SLUICE_BENCH_SECRET). Prints `listening on ADDR` on
// stdout once it accepts connections.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/centrifugal/centrifuge"
	"github.com/golang-jwt/jwt"
	"github.com/xeipuuv/gojsonschema"
)

// The tenant: mirrors peers/sluice-bench.toml.
const (
	issuer      = "sluice-bench"
	audience    = "sluice"
	origin      = "https://bench.example.com"
	leeway      = 30 * time.Second
	writeScope  = "chat:write"
	wsPath      = "/ws/bench"
	minSecret   = 32
	schemaError = 400
)

// A channel segment, as Sluice's channel rules allow one.
var segment = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,120}$`)

// principal is what a verified token says about the connection.
type principal struct {
	subject  string
	scopes   []string
	expireAt int64
}

type principalKey struct{}

func (p principal) has(scope string) bool {
	for _, s := range p.scopes {
		if s == scope {
			return true
		}
	}
	return false
}

var errExpired = errors.New("token expired")

// verify checks a connect token the way Sluice's tenant does.
func verify(secret []byte, token string) (principal, error) {
	parser := jwt.Parser{ValidMethods: []string{"HS256"}, SkipClaimsValidation: true}
	claims := jwt.MapClaims{}
	if _, err := parser.ParseWithClaims(token, claims, func(*jwt.Token) (interface{}, error) {
		return secret, nil
	}); err != nil {
		return principal{}, err
	}
	now := time.Now()
	exp, ok := number(claims["exp"])
	if !ok {
		return principal{}, errors.New("no exp")
	}
	if now.After(time.Unix(int64(exp), 0).Add(leeway)) {
		return principal{}, errExpired
	}
	if nbf, present := claims["nbf"]; present {
		v, ok := number(nbf)
		if !ok || now.Add(leeway).Before(time.Unix(int64(v), 0)) {
			return principal{}, errors.New("not yet valid")
		}
	}
	if iss, _ := claims["iss"].(string); iss != issuer {
		return principal{}, errors.New("wrong issuer")
	}
	if !claims.VerifyAudience(audience, true) {
		return principal{}, errors.New("wrong audience")
	}
	sub, _ := claims["sub"].(string)
	if sub == "" {
		return principal{}, errors.New("no subject")
	}
	scope, _ := claims["scope"].(string)
	return principal{subject: sub, scopes: strings.Fields(scope), expireAt: int64(exp)}, nil
}

func number(v interface{}) (float64, bool) {
	f, ok := v.(float64)
	return f, ok
}

// validator checks data against one of peers/schemas/.
type validator struct{ schema *gojsonschema.Schema }

func loadSchema(dir, name string) (validator, error) {
	text, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return validator{}, err
	}
	s, err := gojsonschema.NewSchema(gojsonschema.NewBytesLoader(text))
	if err != nil {
		return validator{}, fmt.Errorf("%s: %w", name, err)
	}
	return validator{s}, nil
}

// check returns nil, or the error the client gets.
func (v validator) check(data []byte) error {
	if len(data) == 0 {
		data = []byte("null")
	}
	r, err := v.schema.Validate(gojsonschema.NewBytesLoader(data))
	if err != nil {
		return &centrifuge.Error{Code: schemaError, Message: "schema_invalid: data is not JSON"}
	}
	if !r.Valid() {
		return &centrifuge.Error{Code: schemaError, Message: "schema_invalid: " + r.Errors()[0].String()}
	}
	return nil
}

// roomOrOwn: the channels a principal may subscribe to.
func mayRead(ch string, p principal) bool {
	if id := strings.TrimPrefix(ch, "room:"); id != ch {
		return segment.MatchString(id)
	}
	return ch == "user:"+p.subject
}

func mayWrite(ch string, p principal) bool {
	id := strings.TrimPrefix(ch, "room:")
	return id != ch && segment.MatchString(id) && p.has(writeScope)
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (port 0: any free port)")
	certFile := flag.String("cert", "", "PEM certificate chain")
	keyFile := flag.String("key", "", "PEM private key")
	secretFile := flag.String("secret-file", "", "the HS256 secret (else $SLUICE_BENCH_SECRET)")
	exe, _ := os.Executable()
	schemas := flag.String("schemas", "", "the directory of echo.json and chat.send.json (default: peers/schemas beside the source, or $SLUICE_BENCH_SCHEMAS)")
	flag.Parse()
	if err := run(*listen, *certFile, *keyFile, *secretFile, schemaDir(*schemas, exe)); err != nil {
		fmt.Fprintln(os.Stderr, "centrifuge-peer:", err)
		os.Exit(1)
	}
}

// schemaDir: --schemas, else $SLUICE_BENCH_SCHEMAS, else peers/schemas found
// from the working directory (the repository root or peers/centrifuge).
func schemaDir(flagged, exe string) string {
	if flagged != "" {
		return flagged
	}
	if env := os.Getenv("SLUICE_BENCH_SCHEMAS"); env != "" {
		return env
	}
	for _, dir := range []string{"peers/schemas", "../schemas"} {
		if _, err := os.Stat(filepath.Join(dir, "echo.json")); err == nil {
			return dir
		}
	}
	return filepath.Join(filepath.Dir(exe), "schemas")
}

func run(listen, certFile, keyFile, secretFile, schemas string) error {
	if certFile == "" || keyFile == "" {
		return errors.New("--cert and --key are required")
	}
	secret, err := loadSecret(secretFile)
	if err != nil {
		return err
	}
	echoSchema, err := loadSchema(schemas, "echo.json")
	if err != nil {
		return err
	}
	sendSchema, err := loadSchema(schemas, "chat.send.json")
	if err != nil {
		return err
	}

	cfg := centrifuge.DefaultConfig
	cfg.LogLevel = centrifuge.LogLevelNone
	node, err := centrifuge.New(cfg)
	if err != nil {
		return err
	}
	node.OnConnecting(func(ctx context.Context, e centrifuge.ConnectEvent) (centrifuge.ConnectReply, error) {
		p, err := verify(secret, e.Token)
		if errors.Is(err, errExpired) {
			return centrifuge.ConnectReply{}, centrifuge.ErrorTokenExpired
		}
		if err != nil {
			return centrifuge.ConnectReply{}, centrifuge.DisconnectInvalidToken
		}
		return centrifuge.ConnectReply{
			Context:     context.WithValue(ctx, principalKey{}, p),
			Credentials: &centrifuge.Credentials{UserID: p.subject, ExpireAt: p.expireAt},
		}, nil
	})
	node.OnConnect(func(c *centrifuge.Client) {
		p, _ := c.Context().Value(principalKey{}).(principal)
		c.OnRPC(func(e centrifuge.RPCEvent, cb centrifuge.RPCCallback) {
			if e.Method != "echo" {
				cb(centrifuge.RPCReply{}, centrifuge.ErrorMethodNotFound)
				return
			}
			if err := echoSchema.check(e.Data); err != nil {
				cb(centrifuge.RPCReply{}, err)
				return
			}
			cb(centrifuge.RPCReply{Data: e.Data}, nil)
		})
		c.OnSubscribe(func(e centrifuge.SubscribeEvent, cb centrifuge.SubscribeCallback) {
			if !mayRead(e.Channel, p) {
				cb(centrifuge.SubscribeReply{}, centrifuge.ErrorPermissionDenied)
				return
			}
			cb(centrifuge.SubscribeReply{}, nil)
		})
		c.OnPublish(func(e centrifuge.PublishEvent, cb centrifuge.PublishCallback) {
			if !mayWrite(e.Channel, p) {
				cb(centrifuge.PublishReply{}, centrifuge.ErrorPermissionDenied)
				return
			}
			if err := sendSchema.check(e.Data); err != nil {
				cb(centrifuge.PublishReply{}, err)
				return
			}
			cb(centrifuge.PublishReply{}, nil)
		})
	})
	if err := node.Run(); err != nil {
		return err
	}

	mux := http.NewServeMux()
	mux.Handle(wsPath, centrifuge.NewWebsocketHandler(node, centrifuge.WebsocketConfig{
		CheckOrigin: func(r *http.Request) bool {
			o := r.Header.Get("Origin")
			return o == "" || o == origin
		},
	}))
	tlsConfig, err := serverTLS(certFile, keyFile)
	if err != nil {
		return err
	}
	server := &http.Server{
		Handler:   mux,
		TLSConfig: tlsConfig,
		// No HTTP/2: a WebSocket upgrade is HTTP/1.1 (ALPN http/1.1 only).
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ReadHeaderTimeout: 10 * time.Second,
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	fmt.Printf("listening on %s\n", ln.Addr())
	done := make(chan error, 1)
	go func() { done <- server.Serve(tls.NewListener(ln, tlsConfig)) }()
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	select {
	case err := <-done:
		return err
	case <-signals:
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = node.Shutdown(ctx)
		return server.Close()
	}
}

func loadSecret(file string) ([]byte, error) {
	var secret string
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		secret = strings.TrimSpace(string(b))
	} else {
		secret = os.Getenv("SLUICE_BENCH_SECRET")
	}
	if secret == "" {
		return nil, errors.New("no HMAC secret: give --secret-file or set $SLUICE_BENCH_SECRET")
	}
	if len(secret) < minSecret {
		return nil, errors.New("the HMAC secret is shorter than 32 bytes")
	}
	return []byte(secret), nil
}

// serverTLS: Sluice's TLS settings as far as Go's crypto/tls has them.
// Go chooses TLS 1.3's suite itself (AES-128-GCM first where the CPU has
// AES instructions; Sluice prefers AES-256-GCM) and has no X25519MLKEM768
// before Go 1.24 (the client falls back to X25519, offered alongside).
func serverTLS(certFile, keyFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates:     []tls.Certificate{cert},
		MinVersion:       tls.VersionTLS12,
		CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384},
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
		NextProtos: []string{"http/1.1"},
	}, nil
}
