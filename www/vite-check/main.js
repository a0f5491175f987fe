// The package as a web developer uses it in a Vite app: imported by name, nothing else.
import { EventBusClient } from 'distributed-events';

const status = /** @type {HTMLElement} */ (document.getElementById('status'));
const events = /** @type {HTMLElement} */ (document.getElementById('events'));

const client = new EventBusClient({ serverUrl: location.origin, autoForward: true, initialPosition: 0 });
// Keep a reference for as long as the page should receive events: a client that is
// garbage-collected closes (its handlers alone do not keep it alive). vite.test.mjs
// forces a collection to check that this page keeps it.
window.eventBusClient = client;

client.onStatus((next) => {
  status.dataset.state = next.state;
  status.textContent = next.state === 'backingOff' ? `backingOff: ${next.error.message}` : next.state;
  // For whoever reads the console (vite.test.mjs shows it when the page fails).
  console.info(`status: ${status.textContent}`);
});
client.onError((error) => console.error(`${error.code}: ${error.message}`));
client.on('*', (event) => {
  const entry = document.createElement('li');
  entry.dataset.id = event.id;
  entry.textContent = `${event.eventType} ${event.id}`;
  events.append(entry);
});
