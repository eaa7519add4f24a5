package tcpfallback

// holdLivenessStats takes what Liveness takes, every thread's part at
// once, as readers that are then not run would hold them, until release
// is called.
func holdLivenessStats(t *Transport) (release func()) {
	for k := range t.watchdog.thread {
		t.watchdog.thread[k].pubMu.Lock()
	}
	return func() {
		for k := range t.watchdog.thread {
			t.watchdog.thread[k].pubMu.Unlock()
		}
	}
}
