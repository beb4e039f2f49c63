// orkestr: the TypeScript SDK of the orkestr sandbox API (sandboxes for AI
// agents: commands, files, metrics and plan limits). Zero runtime
// dependencies; only fetch, ReadableStream, TextEncoder/Decoder and
// AbortController are used.

export {
  Sandbox,
  ExecStream,
  Files,
  type CreateOptions,
  type RequestOptions,
  type ListOptions,
  type ExecOptions,
  type ExecChunk,
  type Limits,
  type SizeInfo,
  type Template,
  type Metrics,
  type MetricSample,
  type FileEntry,
  type SandboxData,
  type SandboxStatus,
  type SandboxSize,
  type NetworkMode,
} from "./sandbox.js";
export {
  OrkestrError,
  AuthError,
  RateLimitError,
  PlanLimitError,
  SnapshotCapReached,
  SandboxNotFound,
  SandboxNotReady,
  ExecTimeout,
  NetworkPolicyError,
  type ExecResult,
  type BlockedConnection,
  type OrkestrErrorInit,
} from "./errors.js";
export { Terminal, type TerminalOptions, type TerminalExit } from "./terminal.js";
export {
  Process,
  Processes,
  Detached,
  type User,
  type OutputChunk,
  type StartOptions,
  type OutputOptions,
  type ProcessInfo,
  type FileStat,
  type WatchEvent,
  type UserOptions,
} from "./processes.js";
export { VERSION, DEFAULT_BASE_URL, type ClientOptions, type CallOptions } from "./http.js";
