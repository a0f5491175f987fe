// The socket.io side of the comparison (compare.mjs starts it): a relay that takes each
// `publish` from a client and broadcasts it as `event` to every other connected client,
// the way an app would push an event through socket.io. Nothing is stored.
//
//     node relay.mjs [port]        # prints `listening on http://127.0.0.1:PORT`, 0 = any
//
// It accepts both transports (websocket and HTTP long-polling); the load generator picks
// one per client.
import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number(process.argv[2] ?? 0);
const http = createServer();
const io = new Server(http, {
  transports: ["websocket", "polling"],
  // The publisher's acks and the broadcasts are small; no compression, as ours has none.
  perMessageDeflate: false,
  httpCompression: false,
  // A thousand clients connect within a second on a loaded machine.
  pingTimeout: 60_000,
});

io.on("connection", (socket) => {
  socket.on("publish", (event, ack) => {
    // socket.io encodes a broadcast once for every receiver.
    socket.broadcast.emit("event", event);
    if (typeof ack === "function") ack();
  });
});

http.listen(port, "127.0.0.1", () => {
  const { port: bound } = http.address();
  console.error(`listening on http://127.0.0.1:${bound}`);
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    io.close();
    process.exit(0);
  });
}
