package pgbackend

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

func checkGoroutines(t *testing.T) {
	t.Helper()
	base := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(2 * time.Second)
		for runtime.NumGoroutine() > base {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<16)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("%d goroutines still running, %d before the test:\n%s", runtime.NumGoroutine(), base, buf)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// fakePostmaster listens on a Unix socket in a temporary directory and
// answers each connection's first message with replies, then closes it.
// It returns the socket's path and what it received.
func fakePostmaster(t *testing.T, replies ...pgproto3.BackendMessage) (string, <-chan pgproto3.FrontendMessage) {
	t.Helper()
	dir := t.TempDir()
	sock := SocketPath(dir, 5432)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan pgproto3.FrontendMessage, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		be := pgproto3.NewBackend(conn, conn)
		m, err := be.ReceiveStartupMessage()
		if err != nil {
			return
		}
		got <- m
		for _, r := range replies {
			be.Send(r)
		}
		_ = be.Flush()
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return sock, got
}

func TestConnect(t *testing.T) {
	checkGoroutines(t)
	sock, got := fakePostmaster(t,
		&pgproto3.AuthenticationOk{},
		&pgproto3.ParameterStatus{Name: "server_version", Value: "15.20"},
		&pgproto3.NoticeResponse{Message: "ignored"},
		&pgproto3.ParameterStatus{Name: "client_encoding", Value: "UTF8"},
		&pgproto3.BackendKeyData{ProcessID: 42, SecretKey: []byte{1, 2, 3, 4}},
		&pgproto3.ReadyForQuery{TxStatus: 'I'},
	)
	params := map[string]string{"user": "alice", "database": "postgres"}
	b, err := (&Dialer{Socket: sock}).Connect(context.Background(), params)
	if err != nil {
		t.Fatalf("Connect() error = %v", err)
	}
	defer b.Conn.Close()
	sm, ok := (<-got).(*pgproto3.StartupMessage)
	if !ok || sm.Parameters["user"] != "alice" || sm.Parameters["database"] != "postgres" {
		t.Errorf("startup message = %#v; want the client's parameters", sm)
	}
	if b.PID != 42 || string(b.Key) != "\x01\x02\x03\x04" || b.TxStatus != 'I' {
		t.Errorf("Backend = pid %d key %x status %q; want 42 01020304 'I'", b.PID, b.Key, b.TxStatus)
	}
	if len(b.Params) != 2 || b.Params[0].Name != "server_version" || b.Params[1].Name != "client_encoding" {
		t.Errorf("Params = %v; want server_version, client_encoding in order", b.Params)
	}
}

func TestConnectRefused(t *testing.T) {
	for _, tt := range []struct {
		desc    string
		replies []pgproto3.BackendMessage
		want    string
		// relayed: a BackendError, which the gateway passes to the client.
		relayed bool
	}{
		{"error relayed", []pgproto3.BackendMessage{
			&pgproto3.ErrorResponse{Severity: "FATAL", Code: "3D000", Message: `database "nope" does not exist`},
		}, `FATAL: database "nope" does not exist`, true},
		{"authentication asked", []pgproto3.BackendMessage{&pgproto3.AuthenticationCleartextPassword{}},
			"asked for authentication", false},
		{"ready before authentication", []pgproto3.BackendMessage{&pgproto3.ReadyForQuery{TxStatus: 'I'}},
			"unexpected ReadyForQuery", false},
		{"closed mid-startup", []pgproto3.BackendMessage{&pgproto3.AuthenticationOk{}},
			"reading startup reply", false},
	} {
		t.Run(tt.desc, func(t *testing.T) {
			checkGoroutines(t)
			sock, _ := fakePostmaster(t, tt.replies...)
			b, err := (&Dialer{Socket: sock}).Connect(context.Background(), map[string]string{"user": "alice"})
			if err == nil {
				b.Conn.Close()
				t.Fatal("Connect() error = nil; want a refusal")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Connect() error = %v; want %q", err, tt.want)
			}
			var be *BackendError
			if errors.As(err, &be) != tt.relayed {
				t.Errorf("Connect() error = %T; BackendError wanted: %v", err, tt.relayed)
			}
		})
	}
}

func TestCancel(t *testing.T) {
	checkGoroutines(t)
	sock, got := fakePostmaster(t)
	if err := (&Dialer{Socket: sock}).Cancel(context.Background(), 42, []byte{1, 2, 3, 4}); err != nil {
		t.Fatalf("Cancel() error = %v", err)
	}
	cr, ok := (<-got).(*pgproto3.CancelRequest)
	if !ok || cr.ProcessID != 42 || string(cr.SecretKey) != "\x01\x02\x03\x04" {
		t.Errorf("received %#v; want a CancelRequest for pid 42", cr)
	}
}

// A postmaster that does not close the cancel connection in time has not
// confirmed the cancel: it may still be delivered, which the gateway must
// know (such a backend never serves another client).
func TestCancelUnconfirmed(t *testing.T) {
	checkGoroutines(t)
	sock := filepath.Join(t.TempDir(), ".s.PGSQL.5432")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	held := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			held <- c // read nothing, close nothing
		}
	}()
	err = (&Dialer{Socket: sock, CancelWait: 50 * time.Millisecond}).Cancel(context.Background(), 42, []byte{1, 2, 3, 4})
	if !errors.Is(err, ErrCancelUnconfirmed) {
		t.Errorf("Cancel() to a postmaster that does not close = %v; want ErrCancelUnconfirmed", err)
	}
	(<-held).Close()
	var b Backend
	if b.CancelUnconfirmed() {
		t.Fatal("a new Backend reports an unconfirmed cancel")
	}
	b.MarkCancelUnconfirmed()
	if !b.CancelUnconfirmed() {
		t.Error("MarkCancelUnconfirmed did not stick")
	}
}

func TestConnectNoSocket(t *testing.T) {
	_, err := (&Dialer{Socket: filepath.Join(t.TempDir(), ".s.PGSQL.5432")}).Connect(context.Background(), nil)
	if err == nil || !strings.Contains(err.Error(), "connecting to PostgreSQL") {
		t.Errorf("Connect() error = %v; want a dial error", err)
	}
}
