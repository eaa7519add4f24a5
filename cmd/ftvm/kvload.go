package main

import (
	"context"
	"os"
	"os/signal"

	"github.com/ftvm/ftvm/bench/kvclient"
)

func init() {
	commands.add(&command{
		name:    "kvload",
		summary: "drive a kvstore guest with UDP load and check the history is linearizable",
		run: func(e *env, args []string) int {
			// Ctrl-C ends the run early; the history so far is still checked.
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
			defer stop()
			return kvclient.Command(ctx, "ftvm kvload", args, e.stdout, e.stderr)
		},
	})
}
