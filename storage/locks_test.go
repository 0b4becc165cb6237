package storage

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/caddymesh/caddymesh/internal/meshtest"
)

const renewer = "storage.(*ConsulKV).renew"

// lockAsync runs Lock in a goroutine and reports its result.
func lockAsync(ctx context.Context, s *ConsulKV, name string) <-chan error {
	done := make(chan error, 1)
	go func() { done <- s.Lock(ctx, name) }()
	return done
}

// assertWaiting checks that a Lock has not returned: it must be waiting.
func assertWaiting(t *testing.T, done <-chan error, who string) {
	t.Helper()
	select {
	case err := <-done:
		t.Fatalf("%s's Lock returned (%v) while another holds the lock", who, err)
	case <-time.After(300 * time.Millisecond):
	}
}

func awaitLock(t *testing.T, done <-chan error, who string) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s's Lock: %v", who, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s's Lock did not return once the lock was free", who)
	}
}

func TestLockWaitsForTheHolder(t *testing.T) {
	ctx := context.Background()
	a := newStorage(t, &ConsulKV{Prefix: "locks-wait"})
	b := newStorage(t, &ConsulKV{Prefix: "locks-wait"})
	for _, tc := range []struct {
		name   string
		second *ConsulKV
	}{
		{"in_the_same_instance", a},
		{"in_another_instance", b},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lock := "issue_cert_" + tc.name
			if err := a.Lock(ctx, lock); err != nil {
				t.Fatal(err)
			}
			done := lockAsync(ctx, tc.second, lock)
			assertWaiting(t, done, "the second")
			if ok, err := b.TryLock(ctx, lock); ok || err != nil {
				t.Errorf("TryLock of a held lock = %v, %v; want false", ok, err)
			}
			if err := a.Unlock(ctx, lock); err != nil {
				t.Fatal(err)
			}
			awaitLock(t, done, "the second")
			if err := tc.second.Unlock(ctx, lock); err != nil {
				t.Fatal(err)
			}
			if ok, err := b.TryLock(ctx, lock); !ok || err != nil {
				t.Errorf("TryLock of a free lock = %v, %v; want true", ok, err)
			}
			b.Unlock(ctx, lock)
		})
	}
}

func TestLockEndsWithItsContext(t *testing.T) {
	a := newStorage(t, &ConsulKV{Prefix: "locks-ctx"})
	if err := a.Lock(context.Background(), "x"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := lockAsync(ctx, a, "x")
	assertWaiting(t, done, "the second")
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), `consul_kv: lock "x"`) {
			t.Errorf("Lock after cancel: %v, want context.Canceled naming the lock", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Lock did not return when its context ended")
	}
	meshtest.Eventually(t, 10*time.Second, "the waiter's renewer to stop", func() bool { return meshtest.Goroutines(renewer) == 1 })
}

func TestUnlockReleasesOnlyItsOwnLock(t *testing.T) {
	ctx := context.Background()
	a := newStorage(t, &ConsulKV{Prefix: "locks-own"})
	b := newStorage(t, &ConsulKV{Prefix: "locks-own"})
	if err := a.Lock(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	if err := b.Unlock(ctx, "x"); err == nil || !strings.Contains(err.Error(), `unlock "x": not held by this instance`) {
		t.Errorf("Unlock of another's lock: %v, want an error", err)
	}
	if ok, _ := b.TryLock(ctx, "x"); ok {
		t.Error("another instance's Unlock released the lock")
	}
	if err := a.RenewLockLease(ctx, "x", time.Minute); err != nil {
		t.Errorf("RenewLockLease of a held lock: %v", err)
	}
	if err := b.RenewLockLease(ctx, "x", time.Minute); err == nil {
		t.Error("RenewLockLease of a lock not held: no error")
	}
}

// TestLostSessionFreesTheLock invalidates the holder's session in Consul,
// as Consul does when the holder dies and its TTL runs out: the key goes
// (behavior delete) and the waiter takes the lock at once.
func TestLostSessionFreesTheLock(t *testing.T) {
	ctx := context.Background()
	a := newStorage(t, &ConsulKV{Prefix: "locks-lost"})
	b := newStorage(t, &ConsulKV{Prefix: "locks-lost"})
	if err := a.Lock(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	done := lockAsync(ctx, b, "x")
	assertWaiting(t, done, "b")
	if _, err := agent.Client.Session().Destroy(a.locks.get("x").session, nil); err != nil {
		t.Fatal(err)
	}
	awaitLock(t, done, "b")
	if err := a.RenewLockLease(ctx, "x", time.Minute); err == nil || !strings.Contains(err.Error(), "lock was lost") {
		t.Errorf("RenewLockLease of a lost lock: %v, want an error", err)
	}
}

// TestCleanupReleasesLocksAndStopsRenewers: a storage going away with its
// config takes its sessions and their renewers with it.
func TestCleanupReleasesLocksAndStopsRenewers(t *testing.T) {
	ctx := context.Background()
	base := meshtest.Goroutines(renewer)
	a := newStorage(t, &ConsulKV{Prefix: "locks-cleanup"})
	for _, name := range []string{"x", "y"} {
		if err := a.Lock(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if n := meshtest.Goroutines(renewer) - base; n != 2 {
		t.Fatalf("%d renewers for 2 locks held", n)
	}
	sessions, _, _ := agent.Client.Session().List(nil)
	before := len(sessions)
	a.Cleanup()
	if n := meshtest.Goroutines(renewer) - base; n != 0 {
		t.Errorf("%d renewers left after Cleanup:\n%s", n, meshtest.GoroutineSummary())
	}
	sessions, _, _ = agent.Client.Session().List(nil)
	if before-len(sessions) != 2 {
		t.Errorf("%d sessions destroyed by Cleanup, want 2", before-len(sessions))
	}
	b := newStorage(t, &ConsulKV{Prefix: "locks-cleanup"})
	if ok, err := b.TryLock(ctx, "x"); !ok || err != nil {
		t.Errorf("TryLock after the holder's cleanup = %v, %v; want true", ok, err)
	}
}

func TestAdminShowsLocksHeld(t *testing.T) {
	ctx := context.Background()
	a := newStorage(t, &ConsulKV{Prefix: "admin-view", AESKeyFile: keyFile(t), Consul: nil})
	if err := a.Lock(ctx, "issue_cert_a.example"); err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	if err := serveStorage(rec, httptest.NewRequest(http.MethodGet, "/mesh/storage", nil)); err != nil {
		t.Fatal(err)
	}
	var views []storageView
	if err := json.Unmarshal(rec.Body.Bytes(), &views); err != nil {
		t.Fatal(err)
	}
	var found *storageView
	for i := range views {
		if views[i].Prefix == "admin-view" {
			found = &views[i]
		}
	}
	want := lockView{Name: "issue_cert_a.example", Key: "admin-view/locks/issue_cert_a.example", Session: a.locks.get("issue_cert_a.example").session}
	if found == nil || !found.Encrypted || len(found.Locks) != 1 ||
		found.Locks[0].Name != want.Name || found.Locks[0].Key != want.Key || found.Locks[0].Session != want.Session {
		t.Fatalf("GET /mesh/storage = %s, want prefix admin-view with lock %+v", rec.Body, want)
	}
	if err := serveStorage(rec, httptest.NewRequest(http.MethodPost, "/mesh/storage", nil)); err == nil {
		t.Error("POST /mesh/storage: no error")
	}
}

// TestLockTakenAfterTheLockDelay: a holder's session (here another
// client's, with a lock delay of 1s) invalidated leaves the key free but
// refused for its lock delay; the waiter must try again, not wait on the
// free key for a change that never comes.
func TestLockTakenAfterTheLockDelay(t *testing.T) {
	b := newStorage(t, &ConsulKV{Prefix: "locks-delay"})
	session, _, err := agent.Client.Session().Create(&api.SessionEntry{TTL: "10s", LockDelay: time.Second, Behavior: api.SessionBehaviorDelete}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ok, _, err := agent.Client.KV().Acquire(&api.KVPair{Key: "locks-delay/locks/x", Session: session}, nil); !ok || err != nil {
		t.Fatalf("acquiring as another client: %v, %v", ok, err)
	}
	done := lockAsync(context.Background(), b, "x")
	assertWaiting(t, done, "b")
	if _, err := agent.Client.Session().Destroy(session, nil); err != nil {
		t.Fatal(err)
	}
	awaitLock(t, done, "b")
}
