import { LabIcon } from '@jupyterlab/ui-components';

import raySvgstr from '../style/icons/ray.svg';

/** The sidebar tab icon: a hexagon of Ray nodes around a head node. */
export const rayIcon = new LabIcon({
  name: 'jupyter-raykube:ray',
  svgstr: raySvgstr
});
