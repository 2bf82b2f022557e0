/** Shallow copies of decoded messages that keep their prototype and hidden fields ($unknowns). */
export function shallowClone<T extends object>(msg: T): T {
  return Object.create(Object.getPrototypeOf(msg) as object, Object.getOwnPropertyDescriptors(msg)) as T;
}
