// The Durable Streams conformance suite, against the server at DURABLE_STREAMS_URL
// (scripts/durable-streams-conformance.sh starts one and sets it).
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

const baseUrl = process.env.DURABLE_STREAMS_URL
if (!baseUrl) {
  throw new Error(
    "DURABLE_STREAMS_URL is not set: run scripts/durable-streams-conformance.sh",
  )
}

runConformanceTests({ baseUrl })
