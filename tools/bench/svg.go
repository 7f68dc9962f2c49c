package main

import (
	"fmt"
	"html"
	"math"
	"strings"
)

// Charts, as plain SVG written by hand: no plotting dependency, and a diff of the committed
// files shows what changed.

var palette = []string{"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"}

type svgDoc struct {
	b    strings.Builder
	w, h float64
}

func newSVG(w, h float64) *svgDoc {
	s := &svgDoc{w: w, h: h}
	fmt.Fprintf(&s.b, `<svg xmlns="http://www.w3.org/2000/svg" width="%g" height="%g" viewBox="0 0 %g %g" font-family="Helvetica, Arial, sans-serif" font-size="12">`+"\n", w, h, w, h)
	fmt.Fprintf(&s.b, `<rect width="%g" height="%g" fill="white"/>`+"\n", w, h)
	return s
}

func (s *svgDoc) text(x, y float64, anchor, extra, t string) {
	fmt.Fprintf(&s.b, `<text x="%.1f" y="%.1f" text-anchor="%s" %s>%s</text>`+"\n", x, y, anchor, extra, html.EscapeString(t))
}

func (s *svgDoc) line(x1, y1, x2, y2 float64, style string) {
	fmt.Fprintf(&s.b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" %s/>`+"\n", x1, y1, x2, y2, style)
}

func (s *svgDoc) rect(x, y, w, h float64, fill string) {
	fmt.Fprintf(&s.b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`+"\n", x, y, w, h, fill)
}

func (s *svgDoc) String() string { return s.b.String() + "</svg>\n" }

// legendRows lays the legend's entries out from x0 in rows no wider than the chart and
// returns each entry's position and the rows' count.
func legendRows(names []string, x0, width float64) (pos [][2]float64, rows int) {
	x, row := x0, 0
	for _, n := range names {
		w := 30 + 6.6*float64(len([]rune(n)))
		if x > x0 && x+w > width-10 {
			x, row = x0, row+1
		}
		pos = append(pos, [2]float64{x, float64(row)})
		x += w
	}
	return pos, row + 1
}

func (s *svgDoc) legend(names []string, pos [][2]float64, y0 float64) {
	for j, n := range names {
		y := y0 + 16*pos[j][1]
		s.rect(pos[j][0], y, 12, 12, palette[j%len(palette)])
		s.text(pos[j][0]+16, y+10, "start", "", n)
	}
}

// niceMax rounds v up to 1, 2 or 5 times a power of ten, and returns the tick step.
func niceMax(v float64) (float64, float64) {
	if v <= 0 {
		return 1, 0.2
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range [][2]float64{{1, 0.2}, {2, 0.5}, {2.5, 0.5}, {4, 1}, {5, 1}, {6, 1}, {8, 2}, {10, 2}} {
		if v <= m[0]*p {
			return m[0] * p, m[1] * p
		}
	}
	return 10 * p, 2 * p
}

type barSeries struct {
	name   string
	values []float64 // per category; 0 or NaN: no bar
}

// barChart draws horizontal grouped bars, one group per category.
func barChart(title, unit string, cats []string, series []barSeries, note string) string {
	const left, right, rowGap = 190.0, 70.0, 10.0
	barH := 16.0
	groupH := barH*float64(len(series)) + rowGap
	w := 760.0
	var names []string
	for _, se := range series {
		names = append(names, se.name)
	}
	pos, rows := legendRows(names, left, w)
	top := 40 + 16*float64(rows) + 6
	h := top + groupH*float64(len(cats)) + 60
	s := newSVG(w, h)
	s.text(w/2, 22, "middle", `font-size="15" font-weight="bold"`, title)
	maxV := 0.0
	for _, se := range series {
		for _, v := range se.values {
			if !math.IsNaN(v) {
				maxV = max(maxV, v)
			}
		}
	}
	topV, step := niceMax(maxV)
	plotW := w - left - right
	x := func(v float64) float64 { return left + plotW*v/topV }
	bottom := top + groupH*float64(len(cats))
	for t := 0.0; t <= topV+step/2; t += step {
		s.line(x(t), top-4, x(t), bottom, `stroke="#ddd"`)
		s.text(x(t), bottom+16, "middle", `fill="#444"`, trimFloat(t))
	}
	s.text(left+plotW/2, bottom+34, "middle", `fill="#444"`, unit)
	for i, c := range cats {
		gy := top + groupH*float64(i)
		s.text(left-8, gy+groupH/2, "end", `dominant-baseline="middle"`, c)
		for j, se := range series {
			v := se.values[i]
			y := gy + float64(j)*barH
			if math.IsNaN(v) || v <= 0 {
				s.text(left+4, y+barH/2+1, "start", `dominant-baseline="middle" fill="#888" font-size="10"`, "n/a")
				continue
			}
			s.rect(left, y+1, x(v)-left, barH-2, palette[j%len(palette)])
			s.text(x(v)+4, y+barH/2+1, "start", `dominant-baseline="middle" font-size="11"`, fmt.Sprintf("%.2f", v))
		}
	}
	s.line(left, top-4, left, bottom, `stroke="#333"`)
	s.legend(names, pos, 34)
	if note != "" {
		s.text(w/2, h-8, "middle", `fill="#666" font-size="10"`, note)
	}
	return s.String()
}

type linePoint struct{ x, y float64 }

type lineSeries struct {
	name   string
	points []linePoint
}

// lineChart draws series over a logarithmic x axis (numbers of services), and a linear y
// axis from 0 (or a logarithmic one, logY).
func lineChart(title, xUnit, yUnit string, series []lineSeries, note string, logY bool) string {
	const w, left, right, bottom = 760.0, 70.0, 30.0, 70.0
	var names []string
	for _, se := range series {
		names = append(names, se.name)
	}
	pos, rows := legendRows(names, left, w)
	top := 40 + 16*float64(rows) + 10
	h := top + 290 + bottom
	s := newSVG(w, h)
	s.text(w/2, 22, "middle", `font-size="15" font-weight="bold"`, title)
	minX, maxX, maxY := math.Inf(1), math.Inf(-1), 0.0
	for _, se := range series {
		for _, p := range se.points {
			minX, maxX, maxY = min(minX, p.x), max(maxX, p.x), max(maxY, p.y)
		}
	}
	if math.IsInf(minX, 1) {
		minX, maxX = 1, 10
	}
	lo, hi := math.Floor(math.Log10(max(minX, 1))), math.Ceil(math.Log10(max(maxX, 10)))
	if hi <= lo {
		hi = lo + 1
	}
	topY, step := niceMax(maxY * 1.05)
	pw, ph := w-left-right, h-top-bottom
	x := func(v float64) float64 { return left + pw*(math.Log10(max(v, 1))-lo)/(hi-lo) }
	y := func(v float64) float64 { return top + ph*(1-v/topY) }
	if logY {
		minY := math.Inf(1)
		for _, se := range series {
			for _, p := range se.points {
				if p.y > 0 {
					minY = min(minY, p.y)
				}
			}
		}
		ylo, yhi := math.Floor(math.Log10(minY)), math.Ceil(math.Log10(maxY))
		if yhi <= ylo {
			yhi = ylo + 1
		}
		y = func(v float64) float64 { return top + ph*(1-(math.Log10(max(v, 1e-9))-ylo)/(yhi-ylo)) }
		for e := ylo; e <= yhi; e++ {
			t := math.Pow(10, e)
			s.line(left, y(t), left+pw, y(t), `stroke="#ddd"`)
			s.text(left-6, y(t)+4, "end", `fill="#444"`, trimFloat(t))
		}
	} else {
		for t := 0.0; t <= topY+step/2; t += step {
			s.line(left, y(t), left+pw, y(t), `stroke="#ddd"`)
			s.text(left-6, y(t)+4, "end", `fill="#444"`, trimFloat(t))
		}
	}
	for e := lo; e <= hi; e++ {
		v := math.Pow(10, e)
		s.line(x(v), top, x(v), top+ph, `stroke="#eee"`)
		s.text(x(v), top+ph+16, "middle", `fill="#444"`, humanCount(v))
	}
	s.line(left, top, left, top+ph, `stroke="#333"`)
	s.line(left, top+ph, left+pw, top+ph, `stroke="#333"`)
	s.text(left+pw/2, top+ph+36, "middle", `fill="#444"`, xUnit)
	fmt.Fprintf(&s.b, `<text x="16" y="%.1f" text-anchor="middle" fill="#444" transform="rotate(-90 16 %.1f)">%s</text>`+"\n", top+ph/2, top+ph/2, html.EscapeString(yUnit))
	for j, se := range series {
		c := palette[j%len(palette)]
		var pts []string
		for _, p := range se.points {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(p.x), y(p.y)))
		}
		if len(pts) > 1 {
			fmt.Fprintf(&s.b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2"/>`+"\n", strings.Join(pts, " "), c)
		}
		for _, p := range se.points {
			fmt.Fprintf(&s.b, `<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"/>`+"\n", x(p.x), y(p.y), c)
		}
	}
	s.legend(names, pos, 34)
	if note != "" {
		s.text(w/2, h-10, "middle", `fill="#666" font-size="10"`, note)
	}
	return s.String()
}

func trimFloat(v float64) string {
	s := fmt.Sprintf("%.2f", v)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s
}

func humanCount(v float64) string {
	switch {
	case v >= 1e6:
		return trimFloat(v/1e6) + "M"
	case v >= 1e3:
		return trimFloat(v/1e3) + "k"
	}
	return trimFloat(v)
}
