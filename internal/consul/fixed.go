package consul

// NewFixedHealthWatch returns a health watch of key that holds a and never
// queries Consul, nor needs stopping: for the tests and benchmarks of
// modules that read health watches.
func NewFixedHealthWatch(key HealthKey, a *Answer) *HealthWatch {
	w := &HealthWatch{Key: key}
	if a != nil {
		w.current.Store(a)
	}
	return w
}

// NewFixedCatalog returns a catalog watch that holds services and never
// queries Consul, nor needs stopping: for the tests and benchmarks of
// modules that read catalog watches.
func NewFixedCatalog(services map[string][]string) *CatalogWatch {
	c := new(CatalogWatch)
	c.services.Store(&services)
	return c
}
