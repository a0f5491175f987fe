// The order board: all state is built from events. Placing or moving an order publishes
// an event; every open tab (this one included) applies the events it receives, in order.
// On load the client reads every stored event from position 0, so a reload rebuilds the
// same board.
import { EventBusClient } from 'distributed-events';

/** What each stage's button does: the next stage and the button's label. */
const NEXT = { placed: ['preparing', 'Start'], preparing: ['ready', 'Ready'], ready: ['collected', 'Collected'] };

/** @type {Map<string, { customer: string, item: string, quantity: number | undefined, stage: string }>} */
const orders = new Map();
/** Receipts (id → position) of own events not logged yet; usually the line comes first. */
const storedAt = new Map();

// autoForward: what this tab publishes goes to the server too (the client's default is
// local only). initialPosition 0: replay every stored event, then follow live.
const client = new EventBusClient({ serverUrl: location.origin, autoForward: true, initialPosition: 0 });

// One handler for every type, so events are applied in the order they were stored.
client.on('*', (event) => {
  if (event.eventType === 'OrderPlaced') {
    const order = readOrder(event.payload);
    orders.set(event.aggregateId, { ...order, stage: 'placed' });
    logEvent(event, `${order.customer}: ${describe(order)}`);
  } else if (event.eventType === 'OrderAdvanced') {
    const order = orders.get(event.aggregateId);
    if (order) order.stage = event.payload.stage;
    logEvent(event, `${order?.customer ?? event.aggregateId} → ${event.payload.stage}`);
  } else {
    logEvent(event, '(not an order event)');
  }
  renderBoard();
});

// This tab's own events come without a position; the server's receipt tells it.
client.onStored(({ id, position }) => {
  const shown = log.querySelector(`li[data-id="${CSS.escape(id)}"] .position`);
  if (shown) shown.textContent = `#${position}`;
  else storedAt.set(id, position);
});

client.onStatus(showStatus);
client.onError((error) => logProblem(`${error.code}: ${error.message}`));

// Placing an order. publish() hands the event to this tab's handlers right away and
// sends it in the background, retrying until the server has stored it.
const form = /** @type {HTMLFormElement} */ (document.getElementById('order-form'));
const formError = /** @type {HTMLElement} */ (document.getElementById('form-error'));
form.addEventListener('submit', (submit) => {
  submit.preventDefault();
  const data = new FormData(form);
  const order = { customer: String(data.get('customer')).trim(), item: String(data.get('item')), quantity: Number(data.get('quantity')) };
  // The input's pattern refuses a name of spaces already; this covers a browser that skips it.
  if (order.customer === '') {
    formError.textContent = 'Not placed: enter the customer\'s name.';
    formError.hidden = false;
    return;
  }
  try {
    client.publish('OrderPlaced', order, { aggregateId: newOrderId() });
    form.reset();
    formError.hidden = true;
  } catch (error) {
    formError.textContent = `Not placed: ${error instanceof Error ? error.message : String(error)}`;
    formError.hidden = false;
  }
});

// Moving an order along: one listener for every card's button.
document.querySelector('.board')?.addEventListener('click', (click) => {
  const button = /** @type {HTMLElement} */ (click.target).closest('button[data-order]');
  if (!(button instanceof HTMLButtonElement)) return;
  try {
    client.publish('OrderAdvanced', { stage: button.dataset.next }, { aggregateId: button.dataset.order });
  } catch (error) {
    logProblem(`not moved: ${error instanceof Error ? error.message : String(error)}`);
  }
});

function renderBoard() {
  for (const stage of Object.keys(NEXT)) {
    const cards = [];
    for (const [id, order] of orders) {
      if (order.stage !== stage) continue;
      const [next, label] = NEXT[stage];
      // textContent only, never innerHTML: names come from other people's tabs.
      const text = element('div');
      text.append(
        element('strong', { textContent: order.customer }),
        element('br'),
        element('span', { className: 'what', textContent: describe(order) }),
      );
      const button = element('button', { type: 'button', textContent: label });
      Object.assign(button.dataset, { order: id, next });
      const card = element('li', { className: 'order' });
      card.dataset.order = id;
      card.append(text, button);
      cards.push(card);
    }
    document.querySelector(`.column[data-stage="${stage}"] ol`)?.replaceChildren(...cards);
  }
}

const log = /** @type {HTMLElement} */ (document.getElementById('log'));

/**
 * An `OrderPlaced` payload as the board shows it. Other apps publish too (the README's
 * quick start sends no quantity), so nothing is taken for granted.
 */
function readOrder(payload) {
  const text = (value) => (typeof value === 'string' ? value.trim() : '');
  const { customer, item, quantity } = payload ?? {};
  return {
    customer: text(customer) || 'Unnamed customer',
    item: text(item) || 'unknown item',
    quantity: Number.isInteger(quantity) && quantity > 0 ? quantity : undefined,
  };
}

/** "2 × Latte", or just "Latte" when the order says no quantity. */
function describe({ item, quantity }) {
  return quantity === undefined ? item : `${quantity} × ${item}`;
}

/** The time of day for today's events; the date too for older (or future) ones. */
function when(occurredAt) {
  const date = new Date(occurredAt);
  const today = date.toDateString() === new Date().toDateString();
  return today ? date.toLocaleTimeString() : date.toLocaleString();
}

/** One line per event; `data-id` lets the browser test check for gaps and repeats. */
function logEvent(event, summary) {
  const entry = element('li');
  entry.dataset.id = event.id;
  // This tab's events have no position until the server's receipt (onStored) tells it.
  const position = event.position ?? storedAt.get(event.id);
  storedAt.delete(event.id);
  entry.append(
    element('span', { className: 'position', textContent: position === undefined ? 'this tab' : `#${position}` }),
    element('time', { className: 'time', dateTime: event.occurredAt, textContent: when(event.occurredAt) }),
    ' ',
    element('span', { className: 'type', textContent: event.eventType }),
    ` ${summary}`,
  );
  log.prepend(entry);
}

function logProblem(message) {
  log.prepend(element('li', { className: 'problem', textContent: `${new Date().toLocaleTimeString()} ${message}` }));
}

const status = /** @type {HTMLElement} */ (document.getElementById('status'));
const statusText = /** @type {HTMLElement} */ (document.getElementById('status-text'));
let countdown = 0;

/** @param {import('distributed-events').EventBusClientStatus} next */
function showStatus(next) {
  clearInterval(countdown);
  status.dataset.state = next.state;
  if (next.state === 'backingOff') {
    // Count down to the next attempt, so that a reader sees the page is still trying.
    const { retryAt, error } = next;
    const tick = () => {
      const seconds = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
      statusText.textContent = `Reconnecting in ${seconds} s`;
      status.title = error.message;
    };
    tick();
    countdown = setInterval(tick, 1000);
  } else {
    statusText.textContent = { connecting: 'Connecting…', live: 'Live', closed: 'Closed' }[next.state];
    status.title = '';
  }
}

/** A short random order id; crypto.randomUUID needs a secure context, this does not. */
function newOrderId() {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return `order-${Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('')}`;
}

/** `document.createElement` with properties. */
function element(tag, properties = {}) {
  return Object.assign(document.createElement(tag), properties);
}
