package main

import (
	"time"
)

// Results is everything one run measured: the JSON written to bench/results/<timestamp>.json,
// and what the report and charts are drawn from.
type Results struct {
	Version  int       `json:"version"`
	Mode     string    `json:"mode"` // full or quick
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Seconds  float64   `json:"seconds"`
	Machine  Machine   `json:"machine"`
	Settings Settings  `json:"settings"`

	PerPacket    *PerPacket    `json:"perPacket,omitempty"`
	Floor        *PPS          `json:"harnessFloor,omitempty"`
	Floor6       *PPS          `json:"harnessFloorIPv6,omitempty"`
	Datapaths    []*Datapath   `json:"datapaths,omitempty"`
	Sweep        []*SweepPoint `json:"sweep,omitempty"`
	InCluster    []*InCluster  `json:"inCluster,omitempty"`
	ControlPlane *ControlPlane `json:"controlPlane,omitempty"`
	Ratios       []Ratio       `json:"ratios"`
	Goals        []Goal        `json:"goals"`
	Error        string        `json:"error,omitempty"`
}

// Machine describes where the run happened.
type Machine struct {
	Hostname   string `json:"hostname"`
	Kernel     string `json:"kernel"`
	OS         string `json:"os"`
	CPUModel   string `json:"cpuModel"`
	CPUs       int    `json:"cpus"`
	MemoryMB   int    `json:"memoryMB"`
	Hypervisor string `json:"hypervisor,omitempty"`
	GoVersion  string `json:"goVersion"`
	Commit     string `json:"commit"`
	Dirty      bool   `json:"dirty"`
	KubeProxy  string `json:"kubeProxy"`
	Iptables   string `json:"iptables"`
	Nft        string `json:"nft"`
	Iperf3     string `json:"iperf3"`
	Wrk        string `json:"wrk"`
	LoadAvg    string `json:"loadAverageAtStart"`
}

// Settings are the knobs of the run.
type Settings struct {
	PPSSeconds      float64 `json:"ppsSecondsPerRun"`
	PPSRuns         int     `json:"ppsRuns"`
	Flows           int     `json:"flows"`
	GenWorkers      int     `json:"generatorWorkers"`
	FrameBytes      int     `json:"frameBytes"`
	IperfSeconds    int     `json:"iperf3Seconds"`
	WrkSeconds      int     `json:"wrkSeconds"`
	ConnSeconds     int     `json:"wrkNewConnectionSeconds"`
	WrkConns        int     `json:"wrkConnections"`
	SweepServices   []int   `json:"sweepServices"`
	SweepBudgetSecs float64 `json:"sweepProgrammingBudgetSeconds"`
	PerPktServices  []int   `json:"perPacketServices"`
	PerPktBackends  []int   `json:"perPacketBackendsPerService"`
	ScaleServices   int     `json:"controlPlaneServices"`
	ScaleEndpoints  int     `json:"controlPlaneEndpointsPerService"`
	ScaleUpdates    int     `json:"controlPlaneUpdates"`
}

// PPS is a packet-rate measurement: the generator's frames into node1, the sink's count of
// what node1 forwarded. Runs holds each run; the headline figures are the median run's.
type PPS struct {
	Path      string   `json:"path"` // remote or local backend, or floor
	Proto     string   `json:"proto"`
	IPv6      bool     `json:"ipv6,omitempty"`
	Runs      []PPSRun `json:"runs"`
	GenMpps   float64  `json:"generatorMpps"`
	FwdMpps   float64  `json:"forwardedMpps"`
	DropRatio float64  `json:"dropRatio"`
	// NsPerPkt is 1e3/FwdMpps: the chain's cost per packet on one CPU (generator, node1, sink).
	NsPerPkt float64 `json:"chainNsPerPacket"`
	// NodeNsPerPkt subtracts the harness floor's cost: what node1's datapath adds.
	NodeNsPerPkt float64 `json:"node1NsPerPacket,omitempty"`
}

// PPSRun is one generator run.
type PPSRun struct {
	Seconds   float64 `json:"seconds"`
	Sent      uint64  `json:"sent"`
	Forwarded uint64  `json:"forwarded"` // frames the sink counted for the expected backend
	SinkAll   uint64  `json:"sinkAll"`   // every frame the sink counted
	Dropped   int64   `json:"dropped"`   // sent - forwarded
	TxDropped int64   `json:"generatorTxDropped"`
	GenMpps   float64 `json:"generatorMpps"`
	FwdMpps   float64 `json:"forwardedMpps"`
}

// Iperf is one iperf3 TCP run.
type Iperf struct {
	Gbps        float64 `json:"gbps"`
	SentGbps    float64 `json:"sentGbps"`
	Retransmits int     `json:"retransmits"`
	Seconds     float64 `json:"seconds"`
}

// Wrk is one wrk run.
type Wrk struct {
	KeepAlive   bool    `json:"keepAlive"`
	Endpoints   int     `json:"endpoints,omitempty"`
	Connections int     `json:"connections"`
	Seconds     float64 `json:"seconds"`
	Requests    int64   `json:"requests"`
	RPS         float64 `json:"requestsPerSecond"`
	P50ms       float64 `json:"latencyP50ms"`
	P99ms       float64 `json:"latencyP99ms"`
	Errors      int64   `json:"errors"`
	// ProxyCPUSecs is the CPU time the proxy process (sluice-agent, kube-proxy) used during
	// the run: a proxy busy rewriting its rules competes with the traffic for the CPUs.
	ProxyCPUSecs float64 `json:"proxyCPUSecondsDuringRun"`
	ErrorDetail  string  `json:"errorDetail,omitempty"`
}

// Datapath is one datapath under test with every measurement of the main table.
type Datapath struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	Target      string `json:"target"` // where the client sends
	Error       string `json:"error,omitempty"`
	PPS         *PPS   `json:"ppsRemote,omitempty"`
	PPSLocal    *PPS   `json:"ppsLocal,omitempty"`
	// PPS6 and PPSLocal6 are the same in IPv6 (pps6.go); bare-xdp has none.
	PPS6      *PPS    `json:"ppsRemoteIPv6,omitempty"`
	PPSLocal6 *PPS    `json:"ppsLocalIPv6,omitempty"`
	Error6    string  `json:"errorIPv6,omitempty"`
	Iperf     *Iperf  `json:"iperf3,omitempty"`
	WrkKeep   *Wrk    `json:"wrkKeepAlive,omitempty"`
	WrkClose  *Wrk    `json:"wrkNewConnection,omitempty"`
	ReadySecs float64 `json:"startToServingSeconds"`
	// NewServiceSecs is from creating a service (the new-connection run's) to its first
	// answer through the datapath.
	NewServiceSecs float64 `json:"newServiceToServedSeconds"`
	// Reasons are sluice's non-zero datapath counters after the measurements.
	Reasons     map[string]uint64 `json:"sluiceCounters,omitempty"`
	SinkMatched string            `json:"sinkMatches"`
}

// SweepPoint is one datapath at one number of services, through the API server.
type SweepPoint struct {
	Datapath string `json:"datapath"`
	Services int    `json:"services"`
	// ProgramSecs is from the proxy's start to every service served (see the report).
	ProgramSecs float64 `json:"startToProgrammedSeconds"`
	// SyncSecs is kube-proxy's own first sync duration (its metric), if known.
	SyncSecs   float64 `json:"proxySyncSeconds,omitempty"`
	OverBudget bool    `json:"overBudget,omitempty"`
	// NewServiceSecs is from creating one more service to its first answer.
	NewServiceSecs float64 `json:"newServiceToServedSeconds,omitempty"`
	Error          string  `json:"error,omitempty"`
	PPS            *PPS    `json:"pps,omitempty"`
	WrkClose       *Wrk    `json:"wrkNewConnection,omitempty"`
	RSSMB          float64 `json:"proxyRSSMegabytes,omitempty"`
}

// PerPacket is the BPF_PROG_TEST_RUN section.
type PerPacket struct {
	Method string `json:"method"`
	// Baselines measured the same way, in ns per packet.
	TrivialNs       float64        `json:"trivialNs"`
	TrivialSingleNs float64        `json:"trivialSingleShotNs"`
	BareNs          float64        `json:"bareForwarderNs"`
	Points          []*PerPktPoint `json:"points"`
	Samples         map[string]int `json:"samples"`
	// IPv6 is one point measured in both families side by side (perpkt6.go).
	IPv6 *PerPkt6 `json:"ipv6,omitempty"`
}

// PerPkt6 is IPv4 and IPv6 through the same program, with Services services of Backends each
// in each family.
type PerPkt6 struct {
	Services int           `json:"services"`
	Backends int           `json:"backendsPerService"`
	Cases    []PerPkt6Case `json:"cases"`
}

// PerPkt6Case is one case's ns per packet in each family.
type PerPkt6Case struct {
	Case   string  `json:"case"`
	IPv4Ns float64 `json:"ipv4Ns"`
	IPv6Ns float64 `json:"ipv6Ns"`
}

// PerPktPoint is the sluice XDP program's cost with Services services of Backends each.
type PerPktPoint struct {
	Services      int     `json:"services"`
	Backends      int     `json:"backendsPerService"`
	ApplySecs     float64 `json:"mapProgrammingSeconds"`
	NewFlowNs     float64 `json:"newFlowNs"`           // single-shot runs, each to a random service
	NewFlowOneNs  float64 `json:"newFlowOneServiceNs"` // single-shot runs, all to one service
	EstablishedNs float64 `json:"establishedNs"`
	ReplyNs       float64 `json:"replyNs"`
	MissNs        float64 `json:"missNs"`
	TrivialNs     float64 `json:"trivialNs"`
	TrivialOneNs  float64 `json:"trivialSingleShotNs"`
}

// ControlPlane is tools/scale's report (the control plane's figures at scale).
type ControlPlane struct {
	Services          int     `json:"services"`
	EndpointsPerSvc   int     `json:"endpointsPerService"`
	CreateSeconds     float64 `json:"apiCreateSeconds"`
	ColdStartSeconds  float64 `json:"coldStartToAllProgrammedSeconds"`
	Updates           int     `json:"updates"`
	UpdateP50Millis   float64 `json:"sliceUpdateToMapP50Millis"`
	UpdateP99Millis   float64 `json:"sliceUpdateToMapP99Millis"`
	UpdateMaxMillis   float64 `json:"sliceUpdateToMapMaxMillis"`
	AgentRSSMegabytes float64 `json:"agentRSSMegabytes"`
	Seconds           float64 `json:"seconds"`
}

// Ratio is a figure divided by its baseline, both from this run.
type Ratio struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Of    string  `json:"of"`
}

// Goal is one of the benchmark's targets (docs/benchmarks.md lists them) and where this run stands.
type Goal struct {
	Goal     string  `json:"goal"`
	Measured float64 `json:"measured"`
	Target   float64 `json:"target"`
	Cmp      string  `json:"cmp"` // >= or <=
	Met      bool    `json:"met"`
	Known    bool    `json:"known"`
}
