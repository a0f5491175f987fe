// @durable-streams/server (the protocol's reference server), file-backed in the folder
// given as the first argument, on a free loopback port; prints "listening on URL".
import { DurableStreamTestServer } from "@durable-streams/server"

const server = new DurableStreamTestServer({ port: 0, host: "127.0.0.1", dataDir: process.argv[2] })
const url = await server.start()
console.error(`listening on ${url}`)
process.on("SIGTERM", async () => {
  await server.stop()
  process.exit(0)
})
