package middleware

import (
	"net/http"
	"sync"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// statusRecorder remembers the status of a response on its way out. It is
// pooled, so that wrapping a response costs no allocation.
type statusRecorder struct {
	caddyhttp.ResponseWriterWrapper
	status int
}

var recorders = sync.Pool{New: func() any { return new(statusRecorder) }}

// recordStatus wraps w until the returned recorder is released.
func recordStatus(w http.ResponseWriter) *statusRecorder {
	rec := recorders.Get().(*statusRecorder)
	rec.ResponseWriter, rec.status = w, 0
	return rec
}

// release returns the recorder to the pool; it must not be used after.
func (rec *statusRecorder) release() {
	rec.ResponseWriter = nil
	recorders.Put(rec)
}

// WriteHeader records the final status (informational ones are not).
func (rec *statusRecorder) WriteHeader(status int) {
	if rec.status == 0 && status >= 200 {
		rec.status = status
	}
	rec.ResponseWriter.WriteHeader(status)
}

// Write records an implicit 200.
func (rec *statusRecorder) Write(b []byte) (int, error) {
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	return rec.ResponseWriter.Write(b)
}
