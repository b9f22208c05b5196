export interface RestartResult {
  readonly finishedTransactions: number;
  readonly logBytes: number;
  readonly readyMs: number;
  readonly emptyReadyMs: number;
  readonly bytesPerFinished: number;
  readonly rssBytesPerFinished: number;
  readonly bytesPerActive: number;
}

export async function restart(): Promise<RestartResult | undefined> {
  return undefined;
}
