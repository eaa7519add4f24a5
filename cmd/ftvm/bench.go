package main

// benchSuites holds every `ftvm bench <suite>`; each suite file adds its own.
var benchSuites = newRegistry("ftvm bench")

func init() {
	commands.add(&command{
		name:    "bench",
		summary: "run a benchmark suite against its baselines and report the ratios",
		run:     func(e *env, args []string) int { return benchSuites.dispatch(e, args) },
	})
}
