package middleware

import "time"

// started is when the process started, by its monotonic clock.
var started = time.Now()

// now returns the current time from the monotonic clock alone: reading
// it costs about half of what time.Now costs, which reads the wall clock
// too. The wall time it carries is the process's start plus the time
// since, which is all the handlers' windows and buckets need.
func now() time.Time { return started.Add(time.Since(started)) }
