package storage

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

const (
	// sessionTTL is the TTL of a lock's session, Consul's minimum. Consul
	// invalidates a session not renewed for up to twice its TTL.
	sessionTTL = 10 * time.Second
	// renewEvery is how often the session of a held lock is renewed.
	renewEvery = sessionTTL / 3
	// lockDelay is how long Consul refuses a lock after the session that
	// held it is invalidated. Consul's default, 15s, guards holders that do
	// not know they lost a lock; certmagic checks storage again once it has
	// a lock and tolerates the rare double work, and a fleet should take
	// over from a dead holder quickly.
	lockDelay = time.Millisecond
	// releaseTimeout bounds the release of a lock whose caller's context
	// is already done.
	releaseTimeout = 5 * time.Second
)

// lease is a Consul session this instance created for one lock, renewed
// until the lease ends.
type lease struct {
	name     string
	key      string
	session  string
	acquired time.Time
	stop     context.CancelFunc
	done     chan struct{} // closed when the renewer has returned
}

// locks are the leases of a storage: the locks it holds, and the renewers
// of every session it has, which stop with the storage.
type locks struct {
	mu   sync.Mutex
	held map[string]*lease // by lock name

	ctx    context.Context // done when the storage is cleaned up
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func (ls *locks) start() {
	ls.held = make(map[string]*lease)
	ls.ctx, ls.cancel = context.WithCancel(context.Background())
}

// stop ends every lease still held with end, then waits for every renewer.
func (ls *locks) stop(end func(*lease) error) {
	ls.mu.Lock()
	ls.cancel()
	held := ls.held
	ls.held = make(map[string]*lease)
	ls.mu.Unlock()
	for _, l := range held {
		_ = end(l)
	}
	ls.wg.Wait()
}

// goRenew runs renew in a goroutine that stop waits for, unless the
// storage is stopping.
func (ls *locks) goRenew(renew func()) error {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if err := ls.ctx.Err(); err != nil {
		return err
	}
	ls.wg.Go(renew)
	return nil
}

// hold records l as held since acquired, unless the storage is stopping.
func (ls *locks) hold(l *lease, acquired time.Time) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.ctx.Err() != nil {
		return false
	}
	l.acquired = acquired // under the lock: GET /mesh/storage reads it
	ls.held[l.name] = l
	return true
}

// take forgets and returns the lease of a held lock, or nil.
func (ls *locks) take(name string) *lease {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	l := ls.held[name]
	delete(ls.held, name)
	return l
}

// get returns the lease of a held lock, or nil.
func (ls *locks) get(name string) *lease {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.held[name]
}

// all returns the leases held, in no particular order.
func (ls *locks) all() []*lease {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	out := make([]*lease, 0, len(ls.held))
	for _, l := range ls.held {
		out = append(out, l)
	}
	return out
}

// Lock takes the lock name, waiting until its holder, in this process or
// another, releases it or loses it, or until ctx is done.
func (s *ConsulKV) Lock(ctx context.Context, name string) error {
	_, err := s.acquire(ctx, name, true)
	return err
}

// TryLock takes the lock name if no one holds it, without waiting.
func (s *ConsulKV) TryLock(ctx context.Context, name string) (bool, error) {
	return s.acquire(ctx, name, false)
}

// Unlock releases the lock name, which this instance must hold: a lock
// another instance or process holds is left alone, with an error.
func (s *ConsulKV) Unlock(ctx context.Context, name string) error {
	l := s.locks.take(name)
	if l == nil {
		return opError("unlock", name, errNotHeld)
	}
	if ctx.Err() != nil {
		ctx = context.WithoutCancel(ctx)
	}
	return s.endLease(ctx, l)
}

// RenewLockLease renews the session of the lock name now and checks that
// this instance still holds it. Sessions of held locks are renewed anyway
// until they are unlocked, so leaseDuration is not needed.
func (s *ConsulKV) RenewLockLease(ctx context.Context, name string, leaseDuration time.Duration) error {
	l := s.locks.get(name)
	if l == nil {
		return opError("renew lock", name, errNotHeld)
	}
	entry, _, err := s.client.Session().Renew(l.session, write(ctx))
	if err != nil {
		return opError("renew lock", name, err)
	}
	if entry == nil {
		return opError("renew lock", name, fmt.Errorf("session %s expired: the lock was lost", l.session))
	}
	return nil
}

// acquire takes the lock name with a session of its own, so that a second
// Lock in this process waits as one in another process does. With wait it
// retries each time the lock's key is released, until ctx is done.
func (s *ConsulKV) acquire(ctx context.Context, name string, wait bool) (bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.locks.ctx, cancel)() // the storage stopping ends the wait
	l, err := s.newLease(ctx, name)
	if err != nil {
		return false, opError("lock", name, err)
	}
	value := s.seal(s.storageKey(l.key), []byte(holder))
	retries := rate.NewLimiter(rate.Every(250*time.Millisecond), 2)
	var index uint64
	triedAgain := false
	for {
		ok, _, err := s.client.KV().Acquire(&api.KVPair{Key: l.key, Value: value, Session: l.session}, write(ctx))
		if err == nil && ok && s.locks.hold(l, time.Now()) {
			return true, nil
		}
		if err == nil && ok { // the storage stopped meanwhile
			err = context.Canceled
		}
		if err == nil && !wait && !triedAgain {
			triedAgain = true
			var free bool
			if free, err = s.awaitLockDelay(ctx, l.key); err == nil && free {
				continue
			}
		}
		if err == nil && wait {
			index, err = s.awaitRelease(ctx, l.key, index, retries)
		}
		if err != nil || !wait {
			_ = s.endLease(context.WithoutCancel(ctx), l)
			if err != nil {
				return false, opError("lock", name, err)
			}
			return false, nil
		}
	}
}

// awaitRelease waits, with blocking queries, until the lock key has no
// holder, and returns the index to wait from next time: 0 once the key is
// free, since Consul may still refuse it for the lock delay, and a wait on
// a free key's index would block until the next change.
func (s *ConsulKV) awaitRelease(ctx context.Context, key string, index uint64, retries *rate.Limiter) (uint64, error) {
	for {
		if err := retries.Wait(ctx); err != nil {
			return 0, err
		}
		q := query(ctx)
		q.WaitIndex, q.WaitTime = index, time.Minute
		pair, meta, err := s.client.KV().Get(key, q)
		if err != nil {
			return 0, err
		}
		if meta.LastIndex < index { // Consul's state was reset
			index = 0
		} else {
			index = meta.LastIndex
		}
		if pair == nil || pair.Session == "" {
			return 0, nil
		}
	}
}

// awaitLockDelay reports whether the lock key, which Consul refused, has
// no holder, and then waits out the lock delay that made Consul refuse it
// (a holder released it a moment ago), so that a TryLock of a free lock
// takes it.
func (s *ConsulKV) awaitLockDelay(ctx context.Context, key string) (bool, error) {
	pair, _, err := s.client.KV().Get(key, query(ctx))
	if err != nil || (pair != nil && pair.Session != "") {
		return false, err
	}
	select {
	case <-time.After(lockDelay):
		return true, nil
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

// newLease creates the session for lock name and starts renewing it.
func (s *ConsulKV) newLease(ctx context.Context, name string) (*lease, error) {
	key := s.kvKey("locks/" + certmagic.StorageKeys.Safe(name))
	session, _, err := s.client.Session().Create(&api.SessionEntry{
		Name:      "caddy consul_kv lock " + key,
		TTL:       sessionTTL.String(),
		Behavior:  api.SessionBehaviorDelete,
		LockDelay: lockDelay,
	}, write(ctx))
	if err != nil {
		return nil, err
	}
	renewCtx, stop := context.WithCancel(s.locks.ctx)
	l := &lease{name: name, key: key, session: session, stop: stop, done: make(chan struct{})}
	err = s.locks.goRenew(func() {
		defer close(l.done)
		s.renew(renewCtx, l)
	})
	if err != nil {
		close(l.done)
		_ = s.endLease(context.WithoutCancel(ctx), l)
		return nil, err
	}
	return l, nil
}

// renew renews l's session until ctx is done or Consul reports the
// session gone.
func (s *ConsulKV) renew(ctx context.Context, l *lease) {
	ticker := time.NewTicker(renewEvery)
	defer ticker.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		entry, _, err := s.client.Session().Renew(l.session, write(ctx))
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			if !failing {
				s.logger.Warn("renewing a lock's session failed; retrying", zap.String("lock", l.name), zap.Error(err))
			}
			failing = true
		case entry == nil:
			s.logger.Error("a lock's session expired: the lock is lost", zap.String("lock", l.name), zap.String("session", l.session))
			return
		default:
			if failing {
				s.logger.Info("renewing a lock's session works again", zap.String("lock", l.name))
			}
			failing = false
		}
	}
}

// endLease stops renewing l and destroys its session, which deletes the
// lock's key if the session holds it.
func (s *ConsulKV) endLease(ctx context.Context, l *lease) error {
	l.stop()
	<-l.done
	ctx, cancel := context.WithTimeout(ctx, releaseTimeout)
	defer cancel()
	if _, err := s.client.Session().Destroy(l.session, write(ctx)); err != nil {
		return opError("unlock", l.name, err)
	}
	return nil
}

// holder says who holds a lock, in its key's value.
var holder = func() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("caddy on %s, pid %d", host, os.Getpid())
}()
