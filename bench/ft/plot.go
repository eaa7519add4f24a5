package ft

import (
	"fmt"
	"math"
	"strings"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// A latency-distribution plot, SVG written by hand: latency (log scale)
// against percentile, on the usual axis that stretches the tail: x is
// log10(1/(1-q)), so 50, 90, 99, 99.9 and 99.99 are evenly spaced.
const (
	plotW, plotH          = 780, 420
	plotLeft, plotRight   = 80, 250
	plotTop, plotBottom   = 40, 50
	plotMaxNines          = 4 // 99.99th percentile at the right edge
	plotPointsPerDecade   = 20
	plotMinUs, plotMinCap = 1.0, 1e7 // bounds of the latency axis, µs
)

var plotColors = []string{"#222222", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"}

// Series is one line of a plot.
type Series struct {
	Name string
	Hist *hdrhistogram.Histogram // nanoseconds
}

// PlotSVG draws the latency distributions of series (empty ones left out).
func PlotSVG(title string, series []Series) string {
	var live []Series
	lo, hi := math.Inf(1), 0.0
	for _, s := range series {
		if s.Hist == nil || s.Hist.TotalCount() == 0 {
			continue
		}
		live = append(live, s)
		lo = math.Min(lo, float64(s.Hist.ValueAtQuantile(0))/1e3)
		hi = math.Max(hi, float64(s.Hist.Max())/1e3)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", plotW, plotH, plotW, plotH)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", plotW, plotH)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="14">%s</text>`+"\n", plotLeft, xmlEscape(title))
	if len(live) == 0 {
		b.WriteString(`<text x="80" y="80">no samples</text></svg>` + "\n")
		return b.String()
	}
	// Latency axis: whole decades around the data.
	yLo := math.Pow(10, math.Floor(math.Log10(math.Max(lo, plotMinUs))))
	yHi := math.Pow(10, math.Ceil(math.Log10(math.Min(math.Max(hi, yLo*10), plotMinCap))))
	iw, ih := float64(plotW-plotLeft-plotRight), float64(plotH-plotTop-plotBottom)
	x := func(nines float64) float64 { return plotLeft + iw*nines/plotMaxNines }
	y := func(us float64) float64 {
		us = math.Min(math.Max(us, yLo), yHi)
		return plotTop + ih*(1-(math.Log10(us)-math.Log10(yLo))/(math.Log10(yHi)-math.Log10(yLo)))
	}
	// Grid and axes.
	for n := 0; n <= plotMaxNines; n++ {
		label := []string{"0", "90", "99", "99.9", "99.99"}[n]
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>`+"\n", x(float64(n)), plotTop, x(float64(n)), plotH-plotBottom)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x(float64(n)), plotH-plotBottom+16, label)
	}
	if x50 := x(math.Log10(2)); true {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#eee"/>`+"\n", x50, plotTop, x50, plotH-plotBottom)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">50</text>`+"\n", x50, plotH-plotBottom+16)
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">percentile</text>`+"\n", x(plotMaxNines/2.0), plotH-12)
	for v := yLo; v <= yHi*1.0001; v *= 10 {
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", plotLeft, y(v), plotW-plotRight, y(v))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", plotLeft-6, y(v)+4, fmtDecade(v))
	}
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.0f" height="%.0f" fill="none" stroke="#888"/>`+"\n", plotLeft, plotTop, iw, ih)
	for i, s := range live {
		color := plotColors[i%len(plotColors)]
		var pts []string
		for k := 0; k <= plotMaxNines*plotPointsPerDecade; k++ {
			nines := float64(k) / plotPointsPerDecade
			q := 100 * (1 - math.Pow(10, -nines))
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(nines), y(float64(s.Hist.ValueAtQuantile(q))/1e3)))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.8" points="%s"/>`+"\n", color, strings.Join(pts, " "))
		ly := plotTop + 16 + 18*i
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3"/>`+"\n", plotW-plotRight+12, ly-4, plotW-plotRight+32, ly-4, color)
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s (n=%d)</text>`+"\n", plotW-plotRight+38, ly, xmlEscape(s.Name), s.Hist.TotalCount())
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func xmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;").Replace(s)
}

// fmtDecade renders a power of ten of microseconds: 1 µs, 100 µs, 10 ms, 1 s.
func fmtDecade(us float64) string {
	switch {
	case us < 1e3:
		return fmt.Sprintf("%.0f µs", us)
	case us < 1e6:
		return fmt.Sprintf("%.0f ms", us/1e3)
	default:
		return fmt.Sprintf("%.0f s", us/1e6)
	}
}
